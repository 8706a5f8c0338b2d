"""``micro_batch_size: auto``: the largest micro-batch that fits, found once per shape and remembered.

A forward pass's memory grows with its rows, and how many fit depends on the device, the
model, the image size, the steps and the guidance, so a fixed ``micro_batch_size`` is either
too small (an idle GPU) or an out-of-memory crash. :class:`MicroBatchSearch` finds it per
*shape* (the caller's key, e.g. ``(width, height, steps, guidance)``) on the first batch of
that shape: it tries the ceiling (the batch the actor is handed; a smaller first batch starts
at the smallest of ceiling, ceiling/2, ... that holds its rows, and a later larger batch
searches on from there), halves on an out-of-memory error (freeing the device cache
first), and remembers the first size that fits. An out-of-memory error later at a
remembered size halves it again (and records it).

Bytes do not change with the size picked. A row's bytes depend on its micro-batch
(``models.batching``: kernels pick their blocking from the batch's shape; measured on CPU
with the built-in models, sizes 1, 2, 4 and 8 give different bytes for some rows), so the
search keeps a size only where it gives the bytes of micro-batch 1: before a size above 1 is
remembered, the same rows are computed at micro-batch 1 and compared byte for byte; a size
that differs is given up like one that did not fit. ``auto`` therefore always yields the
bytes of ``micro_batch_size: 1``, and uses larger passes only where the device computes
them identically (on the CPU build measured here that is seldom; the check runs once per
shape and actor, on the first batch's rows).

This module is plain Python + numpy (torch only to free the CUDA cache); what counts as an
out-of-memory error is the caller's rule (``pipelines.resilience.is_out_of_memory``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

__all__ = ["Backoff", "MicroBatchSearch", "free_device_cache"]

Result = TypeVar("Result")
OUT_OF_MEMORY = "out of memory"
BYTES_DIFFER = "bytes differ from micro-batch 1"


def free_device_cache() -> None:
    """Return the CUDA caching allocator's free blocks to the device (no-op without CUDA)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Backoff:
    """One size the search gave up: the shape, the size, and why (out of memory, or other bytes)."""

    shape: Hashable
    size: int
    reason: str


@dataclass
class MicroBatchSearch(Generic[Result]):
    """Finds and remembers the micro-batch of each shape; see the module docstring.

    Args:
        ceiling: the largest micro-batch tried (the rows the actor is handed per batch).
        is_out_of_memory: whether an exception is a device out-of-memory error.
        images: the uint8 images of a result, compared byte for byte with micro-batch 1's.
        before_pass: called with the micro-batch before every try (a fault-injection hook).
        free_cache: called after an out-of-memory error, before the next try.

    Attributes:
        fits: the remembered micro-batch of each shape.
        backoffs: every size given up, in order.
        growable: shapes whose fit was the start of a search below the ceiling (nothing was
            given up), so a larger batch of them searches again.
    """

    ceiling: int
    is_out_of_memory: Callable[[BaseException], bool]
    images: Callable[[Result], np.ndarray]
    before_pass: Callable[[int], None] = lambda size: None
    free_cache: Callable[[], None] = free_device_cache
    fits: dict[Hashable, int] = field(default_factory=dict)
    backoffs: list[Backoff] = field(default_factory=list)
    growable: set[Hashable] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            raise ValueError(f"the micro-batch ceiling must be positive, got {self.ceiling}")

    def run(self, shape: Hashable, compute: Callable[[int], Result], rows: int) -> tuple[Result, int]:
        """Compute one batch of ``shape`` at its micro-batch, searching it first when unknown.

        Args:
            shape: the key the fit is remembered under.
            compute: computes the whole batch at the micro-batch it is given.
            rows: the rows in the batch.

        Returns:
            ``(result, micro-batch it was computed at)``.

        Raises:
            Exception: whatever ``compute`` raises that is not out of memory, and out of
                memory at micro-batch 1 (nothing smaller to try).
        """
        size = self.fits.get(shape)
        if size is None or (shape in self.growable and rows > size):
            start = self.ceiling
            while start // 2 >= rows:
                start //= 2
            return self._search(shape, compute, start, may_grow=start < self.ceiling)
        try:
            return self._attempt(compute, size), size
        except Exception as error:
            if not self.is_out_of_memory(error) or size == 1:
                raise
            self._give_up(shape, size, OUT_OF_MEMORY)
            del self.fits[shape]
            return self._search(shape, compute, size // 2, may_grow=False)

    def _search(
        self, shape: Hashable, compute: Callable[[int], Result], start: int, *, may_grow: bool
    ) -> tuple[Result, int]:
        """Try ``start``, then halves, until one fits and gives micro-batch 1's bytes; remember it
        (as growable when ``may_grow`` and ``start`` itself was kept)."""
        size, single = start, None  # single: the batch at micro-batch 1, once computed
        while True:
            try:
                result = single if size == 1 and single is not None else self._attempt(compute, size)
            except Exception as error:
                if not self.is_out_of_memory(error) or size == 1:
                    raise
                self._give_up(shape, size, OUT_OF_MEMORY)
                size //= 2
                continue
            if size > 1:
                single = single if single is not None else self._attempt(compute, 1)
                if not np.array_equal(self.images(result), self.images(single)):
                    self._give_up(shape, size, BYTES_DIFFER)
                    size //= 2
                    continue
            self.fits[shape] = size
            if may_grow and size == start:
                self.growable.add(shape)
            else:
                self.growable.discard(shape)
            return result, size

    def _attempt(self, compute: Callable[[int], Result], size: int) -> Result:
        self.before_pass(size)
        return compute(size)

    def _give_up(self, shape: Hashable, size: int, reason: str) -> None:
        if reason == OUT_OF_MEMORY:
            self.free_cache()
        self.backoffs.append(Backoff(shape, size, reason))
