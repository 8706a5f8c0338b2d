"""Turn a model URI into a local model folder; fingerprint a local model folder.

Supported URIs (``models`` works on local files only):

- ``builtin:NAME``: a tiny model built in code (see ``models.builtin``), or one
  shipped in ``models/zoo``.
- a local path or ``file://`` URI: used in place.

A model in object storage (``s3://``, ``gs://``, ``memory://`` ...) is first copied
to a local folder by the storage layer, with the job's retry policy:
``pipelines.storage.sync_folder`` (the stages call it through
``actors.loading.local_model_folder``); its result is a local path this module takes.
"""

from __future__ import annotations

import hashlib
import os

from fsspec.implementations.local import LocalFileSystem

from models.builtin import ensure_builtin_model
from models.publish import MARKERS, is_complete

BUILTIN_PREFIX = "builtin:"
CONFIG_SUFFIXES = (".json", ".txt")


def is_builtin(uri: str) -> bool:
    """Whether ``uri`` names a built-in model (``builtin:NAME``), which needs no storage access."""
    return uri.startswith(BUILTIN_PREFIX)


def resolve_model_path(uri: str, *, cache_dir: str) -> str:
    """Return a local folder holding the model that ``uri`` names.

    Args:
        uri: ``builtin:NAME``, a local path or a ``file://`` URI.
        cache_dir: node-local folder for built-in models.

    Returns:
        A local folder containing ``model_index.json`` (or ``config.json``) and the components.

    Raises:
        ValueError: unknown built-in name, or a remote URI (sync it with the storage layer first).
        FileNotFoundError: the folder holds no ``model_index.json`` / ``config.json``.
    """
    if is_builtin(uri):  # the one non-fsspec scheme
        return ensure_builtin_model(uri[len(BUILTIN_PREFIX) :], cache_dir=cache_dir)
    if "::" in uri or ("://" in uri and not uri.startswith(("file://", "local://"))):
        raise ValueError(
            f"model {uri!r} is in remote storage: models load local folders only; "
            "copy it first with pipelines.storage.sync_folder (actors.loading.local_model_folder)"
        )
    root = LocalFileSystem._strip_protocol(os.path.expanduser(uri.removeprefix("local://")))
    if not is_complete(root):
        raise FileNotFoundError(f"model {uri!r} is not a model folder: no {' or '.join(MARKERS)} in {root!r}")
    return root


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
