"""What every stage does in ``__init__``: pick the device and find its files on local disk.

Stages open no files themselves: remote model folders and weight files are copied to
the node by ``pipelines.storage`` (with the job's retry policy), and ``models`` is
handed local paths.
"""

from __future__ import annotations

from typing import Any

from pipelines.spec import ModelSpec, StageSpec

__all__ = ["stage_device", "local_model_path", "local_model_folder", "local_file"]


def stage_device(stage: StageSpec) -> str:
    """Return the torch device for a stage; fail loudly if CUDA is asked for but absent."""
    device = stage.resolved_device()
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                "this stage asks for CUDA (num_gpus > 0 or device: cuda) but torch sees no GPU "
                "on this worker; set num_gpus: 0 to run on CPU"
            )
    return device


def local_model_folder(uri: str, *, cache_dir: str, storage_options: dict[str, Any] | None) -> str:
    """Return a local model folder for ``uri``: built in (``builtin:NAME``), used in place, or fetched once per node.

    Args:
        uri: ``builtin:NAME``, a Hub id (``org/name``, ``hf://org/name[@revision]``, ``pipelines.hub``),
            a local path, ``file://`` URI or any fsspec URL.
        cache_dir: node-local folder for built-in models and remote copies.
        storage_options: fsspec options for remote URLs (credentials, endpoint, ...).
    """
    from models.store import is_builtin, resolve_model_path
    from pipelines.hub import hub_folder, hub_model
    from pipelines.storage import sync_folder

    if is_builtin(uri):
        local = uri
    elif (hub := hub_model(uri)) is not None:
        local = hub_folder(hub, uri, cache_dir=cache_dir)
    else:
        local = sync_folder(uri, cache_dir=cache_dir, storage_options=storage_options)
    return resolve_model_path(local, cache_dir=cache_dir)


def local_model_path(model: ModelSpec, storage_options: dict[str, Any] | None) -> str:
    """Return the model's local folder, syncing it once per node into the cache."""
    return local_model_folder(model.uri, cache_dir=model.local_cache_dir(), storage_options=storage_options)


def local_file(uri: str, storage_options: dict[str, Any] | None) -> str:
    """Return a local path holding the file at ``uri`` (weights), copied once per node if remote."""
    from pipelines.storage import sync_file

    return sync_file(uri, storage_options=storage_options)
