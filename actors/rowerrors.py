"""Run a model on a batch so that one bad row cannot sink its batch.

A stage calls :func:`run_isolating` with the indices of its healthy rows; when
the model raises on the whole batch (an exception, a GPU out-of-memory error),
the batch is split in halves until the rows that fail on their own are found.
Those rows get the error; the others get their results.  A sticky device
error is the exception: the process exits so that Ray restarts the actor (see
``pipelines.resilience``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from pipelines.resilience import STICKY_DEVICE_ERROR_EXIT_CODE, is_out_of_memory, is_sticky_device_error
from pipelines.schema import ERROR, STAGE, STATUS, STATUS_COLUMNS, Status

__all__ = ["run_isolating", "mark_errors"]

Result = TypeVar("Result")
logger = logging.getLogger(__name__)


def run_isolating(
    compute: Callable[[Sequence[int]], Sequence[Result]], indices: Sequence[int]
) -> tuple[dict[int, Result], dict[int, str]]:
    """Compute results for ``indices``, isolating rows that make ``compute`` raise.

    Args:
        compute: takes a list of row indices, returns one result per index.
        indices: the rows to process.

    Returns:
        ``(results by row index, error message by row index)``.
    """
    results: dict[int, Result] = {}
    errors: dict[int, str] = {}
    pending = [list(indices)] if len(indices) else []
    while pending:
        group = pending.pop()
        try:
            outputs = compute(group)
        except Exception as error:  # noqa: BLE001 - any model error becomes a row error
            if is_sticky_device_error(error):
                _exit_for_restart(error)
            if is_out_of_memory(error):
                _free_device_cache()
            if len(group) == 1:
                errors[group[0]] = f"{type(error).__name__}: {error}"
            else:
                middle = len(group) // 2
                pending.extend([group[middle:], group[:middle]])
            continue
        results.update(zip(group, outputs))
    return results, errors


def _exit_for_restart(error: BaseException) -> None:
    """Leave the process: its CUDA context is broken, Ray restarts the actor and retries the batch."""
    logger.error("sticky device error, exiting so that Ray restarts this actor: %s", error)
    logging.shutdown()
    os._exit(STICKY_DEVICE_ERROR_EXIT_CODE)


def _free_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def mark_errors(
    batch: dict[str, np.ndarray], errors: dict[int, str], *, stage: str, status: Status | str = Status.ERROR
) -> None:
    """Set ``status``/``stage``/``error`` on the failed rows of a batch, in place.

    The status is written as its plain string (``"error"``, ``"filtered"``).
    """
    if not errors:
        return
    value = Status(status).value
    for column in STATUS_COLUMNS:
        batch[column] = batch[column].astype(object)
    for index, message in errors.items():
        batch[STATUS][index] = value
        batch[STAGE][index] = stage
        batch[ERROR][index] = message
