"""The score stage: CLIP score of every image against its prompt, on its own actor pool."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from actors.generate import IMAGE_COLUMN
from actors.loading import local_model_path, stage_device
from actors.rowerrors import mark_errors, run_isolating
from pipelines.faults import inject
from pipelines.spec import ScoreSpec, StageSpec

__all__ = ["ScoreStage"]


class ScoreStage:
    """Callable class for ``map_batches``: adds ``clip_score`` (NaN for rows without an image).

    Rows below ``score.min_score`` become ``filtered`` (stage ``score``), so the
    sink keeps them out of the tar and counts them apart from errors.

    Args:
        score: the CLIP model and the optional threshold.
        stage: device, dtype and batch settings of this stage.
        storage_options: fsspec options for a model in object storage.
    """

    def __init__(self, *, score: ScoreSpec, stage: StageSpec, storage_options: dict[str, Any] | None = None) -> None:
        from models.clip_score import ClipScorer

        self.scorer = ClipScorer(
            local_model_path(score.model, storage_options), device=stage_device(stage), dtype=stage.dtype
        )
        self.min_score = score.min_score
        self.micro_batch = stage.micro_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        size = len(batch["status"])
        healthy = [i for i in range(size) if batch["status"][i] == "ok"]

        def compute(rows: list[int]) -> list[float]:
            prompts = [str(batch["prompt"][i]) for i in rows]
            inject("stage:score", prompts=prompts)
            scores: list[float] = []
            for begin in range(0, len(rows), self.micro_batch):
                chunk = rows[begin : begin + self.micro_batch]
                images = [batch[IMAGE_COLUMN][i] for i in chunk]
                scores += self.scorer.score(images, prompts[begin : begin + self.micro_batch]).tolist()
            return scores

        results, errors = run_isolating(compute, healthy)
        mark_errors(batch, errors, stage="score")
        scores = np.full(size, np.nan, dtype=np.float64)
        for i, value in results.items():
            scores[i] = value
        if self.min_score is not None:
            low = {
                i: f"clip_score {value:.2f} is below min_score {self.min_score:g}"
                for i, value in results.items()
                if value < self.min_score
            }
            mark_errors(batch, low, stage="score", status="filtered")
        batch["clip_score"] = scores
        batch["score_s"] = np.full(size, (time.perf_counter() - start) / max(size, 1))
        return batch
