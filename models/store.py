"""Turn a model URI into a local diffusers folder, downloading remote ones once per node.

Supported URIs:

- ``builtin:NAME``: a tiny model built in code (see ``models.builtin``).
- a local path or ``file://`` URI: used in place.
- any other fsspec URL (``s3://bucket/prefix``, ``gs://``, ``memory://`` ...): copied
  into ``cache_dir/remote/<sha256(uri)[:16]>`` once; later calls reuse the copy.
"""

from __future__ import annotations

import hashlib
import os

import fsspec
from fsspec.implementations.local import LocalFileSystem

from models.builtin import ensure_builtin_model
from models.publish import MARKERS, is_complete, publish_once

BUILTIN_PREFIX = "builtin:"
CONFIG_SUFFIXES = (".json", ".txt")


def resolve_model_path(uri: str, *, cache_dir: str, storage_options: dict | None = None) -> str:
    """Return a local folder holding the diffusers pipeline that ``uri`` names.

    Args:
        uri: ``builtin:NAME``, a local path, ``file://`` URI or any fsspec URL.
        cache_dir: node-local folder for built-in models and remote copies.
        storage_options: fsspec options for remote URLs (credentials, endpoint, ...).

    Returns:
        A local folder containing ``model_index.json`` and the component folders.

    Raises:
        ValueError: unknown built-in name.
        FileNotFoundError: the location holds no ``model_index.json``.
    """
    if uri.startswith(BUILTIN_PREFIX):  # the one non-fsspec scheme
        return ensure_builtin_model(uri[len(BUILTIN_PREFIX) :], cache_dir=cache_dir)
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        if not is_complete(root):
            raise FileNotFoundError(f"model {uri!r} is not a model folder: no {' or '.join(MARKERS)} in {root!r}")
        return root
    return _copy_remote(fs, root, uri=uri, cache_dir=cache_dir)


def _copy_remote(fs: fsspec.AbstractFileSystem, root: str, *, uri: str, cache_dir: str) -> str:
    """Copy the remote folder ``root`` into the cache once (locked, atomic); return the copy."""
    target = os.path.join(cache_dir, "remote", hashlib.sha256(uri.encode()).hexdigest()[:16])
    if is_complete(target):  # cache hit: no network access at all
        return target
    root = root.rstrip("/")
    if not any(fs.exists(f"{root}/{marker}") for marker in MARKERS):
        raise FileNotFoundError(f"model {uri!r} is not a model folder: no {' or '.join(MARKERS)} under it")

    def fill(folder: str) -> None:
        # A trailing slash on the source copies its content into ``folder``, not a subfolder.
        fs.get(f"{root}/", f"{folder}/", recursive=True)

    return publish_once(target, fill)


def model_fingerprint(path: str) -> str:
    """A short stable hash (16 hex chars) of a local model folder.

    Hashes every file's relative path and size, plus the bytes of the small config
    files (``*.json``, ``*.txt``); weight files are not read, so it is cheap for
    multi-GB checkpoints.
    """
    digest = hashlib.sha256()
    for relative in _relative_files(path):
        full = os.path.join(path, relative)
        digest.update(f"{relative}\0{os.path.getsize(full)}\0".encode())
        if relative.endswith(CONFIG_SUFFIXES):
            with open(full, "rb") as handle:
                digest.update(handle.read())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _relative_files(path: str) -> list[str]:
    """Sorted POSIX-style relative paths of all regular files under ``path``."""
    found: list[str] = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in files:
            relative = os.path.relpath(os.path.join(folder, name), path)
            found.append(relative.replace(os.sep, "/"))
    return sorted(found)
