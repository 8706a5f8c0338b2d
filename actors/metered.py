"""The one place a model pool's actor is timed: busy, waiting for input, and the wait for its first batch.

The plan runs every model pool's callable (a stage, ``FusedStage``, ``RegenerateStage``,
``BudgetedPool``) inside :class:`MeteredPool`, so the outermost call is timed once however the
pool is composed, and the stages inside keep only their ``<stage>_s`` columns. The figures ride
on the rows to the sink (``pipelines.utilization`` says why and sums them). No Ray, no torch.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from actors.base import Batch
from pipelines import schema
from pipelines.utilization import columns

__all__ = ["MeteredPool", "metered", "pool_name"]


class MeteredPool:
    """A model pool's callable, timed: each call writes its actor id and time shares on the rows.

    Per call: ``busy_s`` is the call's seconds; ``wait_s`` the seconds since the previous call
    ended (Ray Data's hand-over, batch formatting, an empty input queue); ``first_batch_wait_s``,
    on the first call only, the seconds from the end of ``__init__`` (the model loaded) to it, kept
    apart because it measures start-up, not the steady state; ``init_s``, on the first call only,
    the constructor's seconds (the model load). Each figure is split evenly over the
    call's rows (``pipelines.utilization.columns(pool)``), so their sums give the actor's totals.

    Args:
        pool: the pool's callable class, built here once (the model loads in its constructor).
        pool_kwargs: its constructor arguments.
        clock: seconds, monotonic (tests may pass their own).
    """

    def __init__(
        self, *, pool: Callable[..., Any], pool_kwargs: dict[str, Any], clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.clock = clock
        built = clock()
        self.inner = pool(**pool_kwargs)
        self.name = pool_name(self.inner)
        self.columns = columns(self.name)
        # host, process and instance: an actor restarted by Ray counts as a new actor
        self.actor = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.ready = clock()
        self.init_s = self.ready - built
        self.last_end: float | None = None

    def __call__(self, batch: Batch) -> Batch:
        start = self.clock()
        is_first = self.last_end is None
        first, init = (start - self.ready, self.init_s) if is_first else (0.0, 0.0)
        wait = 0.0 if self.last_end is None else start - self.last_end
        batch = self.inner(batch)
        self.last_end = self.clock()
        size = len(batch[schema.STATUS])
        share = 1.0 / max(size, 1)
        batch[self.columns.actor] = np.full(size, self.actor, dtype=object)
        batch[self.columns.busy_s] = np.full(size, (self.last_end - start) * share)
        batch[self.columns.wait_s] = np.full(size, wait * share)
        batch[self.columns.first_batch_wait_s] = np.full(size, first * share)
        batch[self.columns.init_s] = np.full(size, init * share)
        return batch


_NAMED: dict[Callable[..., Any], type[MeteredPool]] = {}


def metered(pool: Callable[..., Any]) -> type[MeteredPool]:
    """Return :class:`MeteredPool` under ``pool``'s class name (one class per pool class).

    Ray names a pool's operator and its worker processes after the callable's class
    (``MapBatches(FusedStage)``, which ``bench.common.worker_kind`` counts CPU seconds by); the
    wrapper keeps those names. Not importable under that name, so cloudpickle sends it by value.
    """
    if pool not in _NAMED:
        name = getattr(pool, "__name__", MeteredPool.__name__)
        _NAMED[pool] = type(name, (MeteredPool,), {"__qualname__": name, "__doc__": MeteredPool.__doc__})
    return _NAMED[pool]


def pool_name(pool: Any) -> str:
    """Return a pool's name: its stages' names joined by ``+`` (``encode+generate``), without image encoding.

    Image encoding rides in the last pool or not (``placement.encode_images``); the pool's name
    stays the same either way.
    """
    inner = getattr(pool, "inner", None)
    if inner is not None:  # a wrapper (``actors.budget.BudgetedPool``)
        return pool_name(inner)
    contracts = getattr(pool, "contracts", None) or [pool.contract]
    names = [c.name for c in contracts if c.name != schema.IMAGE_ENCODE.name]
    return "+".join(names) or "+".join(c.name for c in contracts)
