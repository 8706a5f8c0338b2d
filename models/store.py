"""Find a model's local folder: built-in, local path, or object storage synced once per node."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["resolve_model_path", "model_fingerprint", "file_lock", "publish_folder"]

_INDEX = "model_index.json"
_CONFIG_SUFFIXES = (".json", ".txt", ".model")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) across processes of one node."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish_folder(staging: Path, final: Path) -> None:
    """Move a finished staging folder into place (an atomic rename on one filesystem)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def _check_pipeline_folder(path: Path, uri: str) -> str:
    if not (path / _INDEX).is_file():
        raise FileNotFoundError(
            f"model.uri {uri}: {path} is not a diffusers pipeline folder (no {_INDEX}); "
            "save one with DiffusionPipeline.save_pretrained"
        )
    return str(path)


def _download(uri: str, target: Path, storage_options: dict[str, Any] | None) -> None:
    from fsspec.core import url_to_fs

    fs, remote = url_to_fs(uri, **(storage_options or {}))
    if not fs.exists(f"{remote.rstrip('/')}/{_INDEX}"):
        raise FileNotFoundError(f"model.uri {uri}: no {_INDEX} there")
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    fs.get(remote.rstrip("/") + "/", str(staging) + "/", recursive=True)
    publish_folder(staging, target)


def resolve_model_path(uri: str, *, cache_dir: str, storage_options: dict[str, Any] | None = None) -> str:
    """Return a local folder holding the diffusers pipeline named by ``uri``.

    Args:
        uri: ``builtin:NAME``, a local path, ``file://`` URI, or any fsspec URI
            (``s3://bucket/models/sd-turbo``).
        cache_dir: per-node cache; remote models are copied to
            ``cache_dir/remote/<hash of uri>`` once, under a file lock, so the
            actors of one node share a single download.
        storage_options: fsspec options for remote URIs.
    """
    if uri.startswith("builtin:"):
        from models.builtin import ensure_builtin_model

        return ensure_builtin_model(uri.split(":", 1)[1], cache_dir=cache_dir)
    if "://" not in uri or uri.startswith("file://"):
        local = Path(os.path.expanduser(uri.removeprefix("file://")))
        return _check_pipeline_folder(local, uri)
    target = Path(cache_dir) / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if not (target / _INDEX).is_file():
        with file_lock(target.with_name(target.name + ".lock")):
            if not (target / _INDEX).is_file():
                _download(uri, target, storage_options)
    return str(target)


def model_fingerprint(path: str) -> str:
    """Return a short stable hash of a model folder: file names, sizes and config bytes.

    Weight files are identified by name and size only, so hashing a multi-GB
    checkpoint costs a directory walk, not a read.
    """
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root).as_posix()
        digest.update(f"{relative}:{file.stat().st_size}\n".encode())
        if file.suffix in _CONFIG_SUFFIXES:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
