"""The stage contract: one skeleton for every callable class ``map_batches`` runs.

A stage declares its :class:`~pipelines.schema.StageColumns` (``contract``: its name and
the columns it adds) and implements :meth:`Stage.compute` on the rows it should process;
the shared :meth:`Stage.__call__` does the rest, the same way in every stage:

1. starts the clock;
2. picks the rows to compute (:meth:`Stage.select`: the ``ok`` rows, in groups that can
   share one call);
3. runs :meth:`Stage.compute` on each group through ``actors.rowerrors.run_isolating``,
   calling the fault hook ``pipelines.faults.inject("stage:<name>")`` before each call,
   so a row that makes the model raise is isolated by bisection;
4. marks the isolated rows ``error`` with the stage's name (``actors.rowerrors.mark_errors``);
5. lets :meth:`Stage.finish` write the stage's columns for every row (rows without a
   result get placeholders, so blocks keep one schema);
6. writes the timing column ``<name>_s`` (batch seconds / rows in the batch).

A model stage's ``micro_batch_size`` means one thing everywhere: rows per forward pass
at a fixed padded shape (``models.batching.in_fixed_chunks``), so a row's result does not
depend on the batch it came in.  This module imports no torch and no Ray.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from actors.rowerrors import mark_errors, run_isolating
from pipelines import schema
from pipelines.faults import inject
from pipelines.schema import StageColumns, Status

__all__ = ["Batch", "Stage", "healthy_rows"]

Batch = dict[str, np.ndarray]


class Stage:
    """Base of the stage actors: subclasses set ``contract`` and implement :meth:`compute`.

    Subclasses may override :meth:`select` (which rows, grouped how) and :meth:`finish`
    (write the columns from the results); they do not override ``__call__``.

    Example:
        >>> class Upper(Stage):
        ...     contract = StageColumns("upper", adds=("upper",))
        ...     def compute(self, batch, rows):
        ...         return [str(batch["prompt"][i]).upper() for i in rows]
        ...     def finish(self, batch, results):
        ...         batch["upper"] = np.array([results.get(i, "") for i in range(len(batch["status"]))], dtype=object)
    """

    contract: ClassVar[StageColumns]

    @property
    def name(self) -> str:
        """The stage's name: ``stage`` of the rows it fails, its fault point ``stage:<name>``."""
        return self.contract.name

    def select(self, batch: Batch) -> list[list[int]]:
        """Return the rows to compute, in groups; each group's rows may share one :meth:`compute` call.

        Default: one group, every row whose status is ``ok``.
        """
        return [healthy_rows(batch)]

    def compute(self, batch: Batch, rows: list[int]) -> Sequence[Any]:
        """Return one result per row of ``rows`` (a group from :meth:`select`, or part of one).

        May raise: the rows are then split until the rows that fail on their own are found.
        """
        raise NotImplementedError

    def finish(self, batch: Batch, results: dict[int, Any]) -> None:
        """Write the stage's columns for every row, in place, from ``{row: result}``."""

    def mark(self, batch: Batch, errors: dict[int, str], status: Status = Status.ERROR) -> None:
        """Set ``status``/``stage``/``error`` of the rows in ``errors`` (with this stage's name)."""
        mark_errors(batch, errors, stage=self.name, status=status)

    def __call__(self, batch: Batch) -> Batch:
        start = time.perf_counter()
        size = len(batch[schema.STATUS])
        point = f"stage:{self.name}"

        def guarded(rows: Sequence[int]) -> Sequence[Any]:
            rows = list(rows)
            prompts = [str(batch[schema.PROMPT][i]) for i in rows] if schema.PROMPT in batch else []
            inject(point, prompts=prompts)
            return self.compute(batch, rows)

        results: dict[int, Any] = {}
        for group in self.select(batch):
            found, errors = run_isolating(guarded, group)
            self.mark(batch, errors)
            results.update(found)
        self.finish(batch, results)
        batch[self.contract.seconds] = np.full(size, (time.perf_counter() - start) / max(size, 1))
        return batch


def healthy_rows(batch: Batch) -> list[int]:
    """The indices of the rows whose status is ``ok``."""
    return [i for i, status in enumerate(batch[schema.STATUS]) if status == Status.OK]
