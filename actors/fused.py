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

from actors.base import Batch, Stage
from pipelines.schema import StageColumns

__all__ = ["FusedStage"]


class FusedStage:
    """Run ``steps`` one after another on each batch, in one actor.

    Every step is a :class:`actors.base.Stage`, so each one keeps its own timing column,
    fault point, row isolation and error marking inside the fused actor.

    Args:
        steps: ``(callable, kwargs)`` pairs.  A class (a stage such as ``EncodeStage``) is
            constructed once with its kwargs; a function that names its stage class as
            ``stage_class`` (``pipelines.images.encode_images``) has that class constructed
            with its kwargs.  Any other function is called on each batch with its kwargs.
    """

    def __init__(self, *, steps: list[tuple[Callable[..., Any], dict[str, Any]]]) -> None:
        self.steps: list[Callable[[Batch], Batch]] = []
        for step, kwargs in steps:
            stage_class = step if isinstance(step, type) else getattr(step, "stage_class", None)
            if stage_class is not None:
                self.steps.append(stage_class(**kwargs))
            else:

                def call(batch: Batch, step: Callable[..., Any] = step, kwargs: dict[str, Any] = kwargs) -> Batch:
                    return step(batch, **kwargs)

                self.steps.append(call)

    @property
    def contracts(self) -> list[StageColumns]:
        """The contracts of the stages this actor runs, in order."""
        return [step.contract for step in self.steps if isinstance(step, Stage)]

    def __call__(self, batch: Batch) -> Batch:
        for step in self.steps:
            batch = step(batch)
        return batch
