"""The score stage: CLIP score of every image against its prompt, on its own actor pool."""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.base import Batch, Stage
from actors.loading import local_model_path, stage_device
from pipelines import schema
from pipelines.schema import IMAGE_COLUMN, Status
from pipelines.spec import ScoreSpec, StageSpec

__all__ = ["ScoreStage", "Attempts", "write_attempts"]

# One row's attempt history: the seeds drawn, their scores (NaN: not scored), the chosen index (-1: none).
Attempts = tuple[list[int], list[float], int]
# A row failed at one of these stages had its image drawn (then failed), so it records one attempt.
_DRAWN_STAGES = (schema.GENERATE.name, schema.STYLE_STAGE.name, schema.SCORE.name)


class ScoreStage(Stage):
    """Callable class for ``map_batches``: adds ``clip_score`` (NaN for rows without an image) and
    ``image_embedding`` (the L2-normalised CLIP image embedding the score used; a ``[rows, dim]``
    float32 array, NaN rows for rows without an image, which the sink stores as null).

    Also writes the attempt columns of one attempt (``attempts``, ``attempt_seeds``,
    ``attempt_scores``, ``chosen_attempt``); the regenerate loop (``actors.regenerate``)
    overwrites them with each row's whole history.

    Rows below ``score.min_score`` become ``filtered`` (stage ``score``), so the
    sink keeps them out of the tar and counts them apart from errors.  The model runs
    on ``stage.micro_batch_size`` rows per forward pass at a fixed padded shape
    (``ClipScorer.score``), so a row's score does not depend on its batch.

    Args:
        score: the CLIP model and the optional threshold.
        stage: device, dtype and batch settings of this stage.
        storage_options: fsspec options for a model in object storage.
    """

    contract = schema.SCORE

    def __init__(self, *, score: ScoreSpec, stage: StageSpec, storage_options: dict[str, Any] | None = None) -> None:
        from models.clip_score import ClipScorer

        self.scorer = ClipScorer(
            local_model_path(score.model, storage_options), device=stage_device(stage), dtype=stage.dtype
        )
        self.min_score = score.min_score
        self.micro_batch = stage.micro_batch_size

    def compute(self, batch: Batch, rows: list[int]) -> list[tuple[float, np.ndarray]]:
        images = [batch[IMAGE_COLUMN][i] for i in rows]
        prompts = [str(batch[schema.PROMPT][i]) for i in rows]
        found = self.scorer.score_and_embed(images, prompts, micro_batch=self.micro_batch)
        return list(zip(found["score"].tolist(), found["embedding"], strict=True))

    def finish(self, batch: Batch, results: dict[int, tuple[float, np.ndarray]]) -> None:
        size = len(batch[schema.STATUS])
        scores = np.full(size, np.nan, dtype=np.float64)
        embeddings = np.full((size, self.scorer.embedding_dim), np.nan, dtype=np.float32)
        for i, (score, embedding) in results.items():
            scores[i], embeddings[i] = score, embedding
        if self.min_score is not None:
            low = {
                i: f"clip_score {score:.2f} is below min_score {self.min_score:g}"
                for i, (score, _) in results.items()
                if score < self.min_score
            }
            self.mark(batch, low, Status.FILTERED)
        batch[schema.CLIP_SCORE] = scores
        batch[schema.IMAGE_EMBEDDING] = embeddings
        history: dict[int, Attempts] = {}
        for i, stage in enumerate(batch[schema.STAGE]):
            if i in results or stage in _DRAWN_STAGES:
                history[i] = ([int(batch[schema.SEED][i])], [float(scores[i])], 0)
        write_attempts(batch, history)


def write_attempts(batch: Batch, history: dict[int, Attempts]) -> None:
    """Write the four attempt columns of every row, in place; rows not in ``history`` drew no image.

    Lists are Python lists of int and float (Arrow reads them as ``list<int64>``/``list<double>``;
    the sink casts all-empty blocks, ``schema.LIST_ITEM_TYPES``).
    """
    size = len(batch[schema.STATUS])
    seeds, scores = np.empty(size, dtype=object), np.empty(size, dtype=object)
    chosen = np.full(size, -1, dtype=np.int64)
    for i in range(size):
        row_seeds, row_scores, pick = history.get(i, ([], [], -1))
        seeds[i], scores[i], chosen[i] = [int(s) for s in row_seeds], [float(s) for s in row_scores], pick
    batch[schema.ATTEMPTS] = np.array([len(s) for s in seeds], dtype=np.int64)
    batch[schema.ATTEMPT_SEEDS] = seeds
    batch[schema.ATTEMPT_SCORES] = scores
    batch[schema.CHOSEN_ATTEMPT] = chosen
