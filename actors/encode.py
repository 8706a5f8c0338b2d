"""The encode stage: prompts -> text embeddings, on its own actor pool."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from actors.loading import local_model_path, stage_device
from actors.rowerrors import mark_errors, run_isolating
from pipelines.faults import inject
from pipelines.spec import ModelSpec, StageSpec

__all__ = ["EncodeStage", "EMBED_PREFIX"]

# Embedding columns travel between the encode and generate stages only.
EMBED_PREFIX = "_pm_emb_"

logger = logging.getLogger(__name__)


class EncodeStage:
    """Callable class for ``map_batches``: adds one ``_pm_emb_*`` column per embedding.

    Only the text encoders and tokenizers are loaded (once per actor).  Rows
    whose ``status`` is not ``ok`` get zero embeddings and are left alone.

    Args:
        model: which pipeline to load, and its fast paths (``model.performance``: the
            weights dtype matters here; the tiny VAE belongs to the generate stage).
        stage: device, dtype and batch settings of this stage.
        storage_options: fsspec options for a model in object storage.
    """

    def __init__(self, *, model: ModelSpec, stage: StageSpec, storage_options: dict[str, Any] | None = None) -> None:
        from models.diffusion import PromptEncoder
        from models.fastpaths import FastPaths

        self.micro_batch = stage.micro_batch_size
        performance = model.performance
        self.encoder = PromptEncoder(
            local_model_path(model, storage_options),
            device=stage_device(stage),
            dtype=performance.explicit_dtype(stage),
            fast_paths=FastPaths(**{**performance.model_dump(), "tiny_vae": None}),
        )
        logger.info("encode stage fast paths: %s", self.encoder.fast_paths_applied)
        # Shapes of each embedding for one row, so rows that failed earlier
        # still get columns of the same shape and blocks keep one schema.
        template = self.encoder.encode([""], [""], guidance=[1.0], micro_batch=1)
        self.templates = {key: np.zeros_like(value[0]) for key, value in template.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        size = len(batch["prompt"])
        healthy = [i for i in range(size) if batch["status"][i] == "ok"]

        def compute(rows: list[int]) -> list[dict[str, np.ndarray]]:
            inject("stage:encode", prompts=[str(batch["prompt"][i]) for i in rows])
            embeds = self.encoder.encode(
                [str(batch["prompt"][i]) for i in rows],
                [str(batch["negative_prompt"][i]) for i in rows],
                guidance=[float(batch["guidance"][i]) for i in rows],
                micro_batch=self.micro_batch,
            )
            return [{key: value[n] for key, value in embeds.items()} for n in range(len(rows))]

        results, errors = run_isolating(compute, healthy)
        mark_errors(batch, errors, stage="encode")
        # Prompts longer than the text encoder's window are truncated by it: say so per row.
        tokens = self.encoder.token_counts([str(p) for p in batch["prompt"]]) if size else []
        batch["prompt_tokens"] = np.asarray(tokens, dtype=np.int64)
        batch["prompt_truncated"] = batch["prompt_tokens"] > self.encoder.max_tokens
        for key, zeros in self.templates.items():
            batch[EMBED_PREFIX + key] = np.stack([results[i][key] if i in results else zeros for i in range(size)])
        batch["encode_s"] = np.full(size, (time.perf_counter() - start) / max(size, 1))
        return batch
