"""What every stage does in ``__init__``: pick the device and find the model folder."""

from __future__ import annotations

from typing import Any

from pipelines.spec import ModelSpec, StageSpec

__all__ = ["stage_device", "local_model_path"]


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


def local_model_path(model: ModelSpec, storage_options: dict[str, Any] | None) -> str:
    """Return the model's local folder, syncing it once per node into the cache."""
    from models.store import resolve_model_path

    return resolve_model_path(model.uri, cache_dir=model.local_cache_dir(), storage_options=storage_options)
