"""The encode stage: prompts -> text embeddings, on its own actor pool."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from actors.base import Batch, Stage
from actors.loading import local_model_path, stage_device
from pipelines import schema
from pipelines.schema import EMBED_PREFIX  # re-exported: embedding columns travel from encode to generate only
from pipelines.spec import ModelSpec, StageSpec

__all__ = ["EncodeStage", "EMBED_PREFIX"]

logger = logging.getLogger(__name__)


class EncodeStage(Stage):
    """Callable class for ``map_batches``: adds one ``_pm_emb_*`` column per embedding.

    Only the text encoders and tokenizers are loaded (once per actor).  Rows
    whose ``status`` is not ``ok`` get zero embeddings and are left alone.

    Args:
        model: which pipeline to load, and its fast paths (``model.performance``: the
            weights dtype matters here; the tiny VAE belongs to the generate stage).
        stage: device, dtype and batch settings of this stage.
        storage_options: fsspec options for a model in object storage.
    """

    contract = schema.ENCODE

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
        # Prompts this actor has encoded (distinct per call, see ``compute``): fewer than its rows with fan-out.
        self.encoded_rows = 0

    def compute(self, batch: Batch, rows: list[int]) -> list[dict[str, np.ndarray]]:
        """Encode each distinct ``(prompt, negative_prompt)`` of ``rows`` once; rows that share one share it.

        The images of one prompt (``pipelines.fanout``) are adjacent, so a batch usually holds
        all of them. Bytes do not change: a row's embeddings depend on its text and
        ``micro_batch_size`` only (ARCHITECTURE.md, "Batch invariance"), and the encoder's
        output does not depend on ``guidance`` (negatives are encoded for every row).
        """
        texts = [(str(batch[schema.PROMPT][i]), str(batch[schema.NEGATIVE_PROMPT][i])) for i in rows]
        first = {text: n for n, text in reversed(list(enumerate(texts)))}  # each text -> its first row
        distinct = sorted(first.values())
        embeds = self.encoder.encode(
            [texts[n][0] for n in distinct],
            [texts[n][1] for n in distinct],
            guidance=[float(batch[schema.GUIDANCE][rows[n]]) for n in distinct],
            micro_batch=self.micro_batch,
        )
        self.encoded_rows += len(distinct)
        slot = {texts[n]: position for position, n in enumerate(distinct)}
        return [{key: value[slot[text]] for key, value in embeds.items()} for text in texts]

    def finish(self, batch: Batch, results: dict[int, dict[str, np.ndarray]]) -> None:
        size = len(batch[schema.PROMPT])
        # Prompts longer than the text encoder's window are truncated by it: say so per row.
        tokens = self.encoder.token_counts([str(p) for p in batch[schema.PROMPT]]) if size else []
        batch[schema.PROMPT_TOKENS] = np.asarray(tokens, dtype=np.int64)
        batch[schema.PROMPT_TRUNCATED] = batch[schema.PROMPT_TOKENS] > self.encoder.max_tokens
        # The negative prompt goes through the same window: flag its truncation too
        negatives = self.encoder.token_counts([str(p or "") for p in batch[schema.NEGATIVE_PROMPT]]) if size else []
        batch[schema.NEGATIVE_PROMPT_TRUNCATED] = np.asarray(negatives, dtype=np.int64) > self.encoder.max_tokens
        for key, zeros in self.templates.items():
            batch[EMBED_PREFIX + key] = np.stack([results[i][key] if i in results else zeros for i in range(size)])
