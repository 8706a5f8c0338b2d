"""Several stages in one actor: the callable class ``map_batches`` runs when stages are fused.

Fusing encode and generate saves the hand-over of the text embeddings between two actor
pools (they travel through Ray's object store otherwise) at the price of one pool sized for
both; running image encoding inside the last model actor saves moving raw uint8 images to
separate CPU tasks.  ``bench/placement.py`` measures both; the spec's ``placement`` section
chooses (``pipelines/plan.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["FusedStage"]

Batch = dict[str, np.ndarray]


class FusedStage:
    """Run ``steps`` one after another on each batch, in one actor.

    Args:
        steps: ``(callable, kwargs)`` pairs.  A class is constructed once with its kwargs
            (a stage actor such as ``EncodeStage``); a function is called on each batch
            with its kwargs (a CPU step such as ``encode_images``).
    """

    def __init__(self, *, steps: list[tuple[Callable[..., Any], dict[str, Any]]]) -> None:
        self.steps: list[Callable[[Batch], Batch]] = []
        for step, kwargs in steps:
            if isinstance(step, type):
                self.steps.append(step(**kwargs))
            else:
                self.steps.append(lambda batch, step=step, kwargs=kwargs: step(batch, **kwargs))

    def __call__(self, batch: Batch) -> Batch:
        for step in self.steps:
            batch = step(batch)
        return batch
