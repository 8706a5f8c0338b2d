"""The generate stage: text embeddings -> uint8 images, on its own actor pool."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np

from actors.base import Batch, Stage, healthy_rows
from actors.loading import local_model_path, stage_device
from pipelines import schema
from pipelines.faults import inject
from pipelines.resilience import is_out_of_memory
from pipelines.schema import EMBED_PREFIX, IMAGE_COLUMN, Status  # IMAGE_COLUMN: re-exported for older imports
from pipelines.spec import GenerateSpec, ModelSpec, StageSpec

__all__ = ["GenerateStage", "IMAGE_COLUMN"]

logger = logging.getLogger(__name__)


class GenerateStage(Stage):
    """Callable class for ``map_batches``: draws images from the encode stage's embeddings.

    Loads the image half of the model with the backend the spec names
    (``models.backends``: a diffusers pipeline without its text encoders, or a GAN
    generator), once per actor.  Rows are grouped by size, steps and guidance so each
    group is one batched call; every row draws its latents (or noise) from its own
    seed, so a row's image does not depend on the batch it lands in.

    With ``stage.auto_micro_batch`` (``micro_batch_size: auto``) each group's micro-batch is
    found by a ``models.autobatch.MicroBatchSearch`` up to ``stage.micro_batch_size``, once per
    ``(width, height, steps, guidance)`` and actor; the fault point ``generate:micro_batch``
    runs before every size it tries. Every row records its micro-batch (``micro_batch``).

    Args:
        model: which model to load, and its fast paths (``model.performance``; a
            ``tiny_vae`` URI is resolved through the model store like ``model.uri``).
        stage: device, dtype and batch settings of this stage.
        generate: which backend draws (default: diffusers).
        storage_options: fsspec options for a model in object storage.
    """

    contract = schema.GENERATE

    def __init__(
        self,
        *,
        model: ModelSpec,
        stage: StageSpec,
        generate: GenerateSpec | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        from actors.loading import local_model_folder
        from models.backends import GENERATE_BACKENDS, load_backend
        from models.fastpaths import FastPaths

        backend = (generate or GenerateSpec()).backend
        performance = model.performance
        tiny_vae = performance.tiny_vae
        if tiny_vae is not None:
            tiny_vae = local_model_folder(tiny_vae, cache_dir=model.local_cache_dir(), storage_options=storage_options)
        self.generator = load_backend(
            backend,
            local_model_path(model, storage_options),
            device=stage_device(stage),
            dtype=performance.explicit_dtype(stage),
            fast_paths=FastPaths(**{**performance.model_dump(), "tiny_vae": tiny_vae}),
        )
        logger.info("generate stage (%s) fast paths: %s", backend, self.generator.fast_paths_applied)
        self.one_pass = GENERATE_BACKENDS[backend].one_pass
        self.model_uri = model.uri
        self.micro_batch = stage.micro_batch_size
        self.search = _search(stage.micro_batch_size) if stage.auto_micro_batch else None

    @staticmethod
    def _settings(batch: Batch, i: int) -> tuple[int, int, int, float]:
        """``(width, height, steps, guidance)`` of row ``i``: rows that share them share one call."""
        return (
            int(batch[schema.WIDTH][i]),
            int(batch[schema.HEIGHT][i]),
            int(batch[schema.STEPS][i]),
            float(batch[schema.GUIDANCE][i]),
        )

    def select(self, batch: Batch) -> list[list[int]]:
        groups: dict[tuple[int, int, int, float], list[int]] = defaultdict(list)
        for i in healthy_rows(batch):
            groups[self._settings(batch, i)].append(i)
        return list(groups.values())

    def compute(self, batch: Batch, rows: list[int]) -> list[tuple[np.ndarray, tuple[str, str] | None, int]]:
        shape = self._settings(batch, rows[0])
        width, height, steps, guidance = shape
        embeds = {name[len(EMBED_PREFIX):]: batch[name][rows] for name in batch if name.startswith(EMBED_PREFIX)}
        seeds = [int(batch[schema.SEED][i]) for i in rows]

        def draw(micro_batch: int) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
            return self.generator.generate_checked(
                embeds, seeds=seeds, width=width, height=height, steps=steps, guidance=guidance,
                micro_batch=micro_batch,
            )

        if self.search is None:
            (generated, problems), micro_batch = draw(self.micro_batch), self.micro_batch
        else:
            (generated, problems), micro_batch = self.search.run(shape, draw, len(rows))
        return [(generated[n], problems.get(n), micro_batch) for n in range(len(rows))]

    def finish(self, batch: Batch, results: dict[int, tuple[np.ndarray, tuple[str, str] | None, int]]) -> None:
        size = len(batch[schema.PROMPT])
        # Rows the checks caught: non-finite or blank images (errors), safety-checker hits (filtered).
        for status in (Status.ERROR, Status.FILTERED):
            caught = {i: problem[1] for i, (_, problem, _) in results.items() if problem and problem[0] == status}
            self.mark(batch, caught, status)
        images = {i: image for i, (image, problem, _) in results.items() if problem is None}
        # 0: no image was drawn for the row (it failed before, or its group raised)
        batch[schema.MICRO_BATCH] = np.array([results[i][2] if i in results else 0 for i in range(size)], np.int64)
        for name in [name for name in batch if name.startswith(EMBED_PREFIX)]:
            del batch[name]
        batch[IMAGE_COLUMN] = _image_column(images, batch)
        if self.one_pass:  # what ran: one forward pass, no guidance, whatever the row asked for
            batch[schema.STEPS] = np.ones(size, dtype=np.asarray(batch[schema.STEPS]).dtype)
            batch[schema.GUIDANCE] = np.ones(size, dtype=np.asarray(batch[schema.GUIDANCE]).dtype)
        info = self.generator.info
        batch[schema.MODEL] = np.full(size, self.model_uri, dtype=object)
        batch[schema.MODEL_HASH] = np.full(size, info["model_hash"], dtype=object)
        batch[schema.SCHEDULER] = np.full(size, info["scheduler"], dtype=object)
        batch[schema.PIPELINE] = np.full(size, info["pipeline"], dtype=object)


def _search(ceiling: int) -> Any:
    """Return a ``MicroBatchSearch`` up to ``ceiling`` over ``generate_checked`` results, with pixelmill's
    out-of-memory rule and the ``generate:micro_batch`` fault point."""
    from models.autobatch import MicroBatchSearch

    return MicroBatchSearch(
        ceiling=ceiling,
        is_out_of_memory=is_out_of_memory,
        images=lambda result: result[0],
        before_pass=lambda rows: inject("generate:micro_batch", rows=rows),
    )


def _image_column(images: dict[int, np.ndarray], batch: Batch) -> np.ndarray:
    """Return one image per row; failed rows get an empty ``0x0x3`` array."""
    column = np.empty(len(batch[schema.PROMPT]), dtype=object)
    for i in range(len(column)):
        column[i] = images.get(i, np.zeros((0, 0, 3), dtype=np.uint8))
    return column
