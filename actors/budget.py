"""The run's budget (``spec.budget``): a ledger actor that holds the spend, and the pool wrapper that feeds it.

The runner starts one named :class:`Ledger` per run (:func:`open_ledger`) only when the spec has a
budget; the plan then wraps every model pool's callable in a :class:`BudgetedPool`, which charges
each batch's busy seconds x its pool's reservation to the ledger (``pipelines.cost``). The first
pool also gates: once the ledger says the budget is spent, it marks the ``ok`` rows of each new
batch ``deferred`` before any stage computes them (the stages compute only ``ok`` rows), and the
sink writes them nowhere. Without a budget nothing here runs: no actor, no remote call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from actors.base import Batch
from pipelines import schema
from pipelines.cost import budget_reached, price
from pipelines.spec import BudgetSpec, CostSpec, JobSpec

__all__ = ["BudgetedPool", "Ledger", "RunBudget", "deferred", "ledger_name", "open_ledger"]

_HOUR_S = 3600.0


class Ledger:
    """One run's spend; runs as the named Ray actor :func:`ledger_name` (``ray.remote`` in :func:`open_ledger`).

    Args:
        budget: the limits.
        prices: what an hour costs (needed for ``budget.cost``).
    """

    def __init__(self, *, budget: BudgetSpec, prices: CostSpec | None) -> None:
        self.budget, self.prices = budget, prices
        self.gpu_s = self.cpu_s = 0.0

    def add(self, gpu_seconds: float, cpu_seconds: float) -> bool:
        """Charge one batch (busy seconds x reserved GPUs, x reserved CPUs); return :meth:`reached`."""
        self.gpu_s += gpu_seconds
        self.cpu_s += cpu_seconds
        return self.reached()

    def reached(self) -> bool:
        """Return whether any limit of the budget is spent."""
        return budget_reached(self.budget, self.prices, gpu_hours=self.gpu_s / _HOUR_S, cpu_hours=self.cpu_s / _HOUR_S)

    def spent(self) -> dict[str, Any]:
        """Return what was spent: ``gpu_hours``, ``cpu_hours``, ``cost`` (None without prices), ``reached``."""
        gpu_hours, cpu_hours = self.gpu_s / _HOUR_S, self.cpu_s / _HOUR_S
        cost = None if self.prices is None else price(self.prices, gpu_hours=gpu_hours, cpu_hours=cpu_hours)
        return {"gpu_hours": gpu_hours, "cpu_hours": cpu_hours, "cost": cost, "reached": self.reached()}


def ledger_name(run_id: str) -> str:
    """Return the Ray actor name of run ``run_id``'s ledger."""
    return f"pixelmill-budget-{run_id}"


class RunBudget:
    """The runner's handle on a run's ledger: its actor name for the plan, its spend for the record."""

    def __init__(self, name: str, actor: Any, budget: BudgetSpec) -> None:
        self.name, self.actor, self.budget = name, actor, budget

    def record(self) -> dict[str, Any]:
        """Return ``_run.json``'s ``budget``: the limits and what was spent (see :meth:`Ledger.spent`)."""
        import ray

        return {"limits": self.budget.model_dump(mode="json"), **ray.get(self.actor.spent.remote())}


@contextmanager
def open_ledger(spec: JobSpec, run_id: str) -> Iterator[RunBudget | None]:
    """Start run ``run_id``'s ledger actor when ``spec.budget`` is set; yield its handle (else None); kill it after."""
    if spec.budget is None:
        yield None
        return
    import ray

    name = ledger_name(run_id)
    ledger: Any = ray.remote(num_cpus=0)(Ledger)  # Ray's stubs do not follow a class through ray.remote
    actor = ledger.options(name=name).remote(budget=spec.budget, prices=spec.cost)
    ray.get(actor.reached.remote())  # started before any pool looks it up by name
    try:
        yield RunBudget(name, actor, spec.budget)
    finally:
        ray.kill(actor)


class BudgetedPool:
    """A model pool's callable, charging each batch to the run's ledger; the plan's first pool also gates.

    Args:
        pool: the pool's callable class (a stage class or ``actors.fused.FusedStage``), built here once.
        pool_kwargs: its constructor arguments.
        ledger: the ledger actor's name (:func:`ledger_name`).
        num_gpus: GPUs one actor of the pool reserves.
        num_cpus: CPUs one actor of the pool reserves.
        gate: whether this pool runs the plan's first model step: it then defers each batch that
            starts after the budget is spent.
    """

    def __init__(
        self, *, pool: Callable[..., Any], pool_kwargs: dict[str, Any], ledger: str,
        num_gpus: float, num_cpus: float, gate: bool,
    ) -> None:
        import ray

        self.inner = pool(**pool_kwargs)
        self.ledger = ray.get_actor(ledger)
        self.num_gpus, self.num_cpus, self.gate = num_gpus, num_cpus, gate

    def __call__(self, batch: Batch) -> Batch:
        import ray

        if self.gate and ray.get(self.ledger.reached.remote()):
            batch[schema.STATUS] = deferred(batch[schema.STATUS])
        # The stages still run on a deferred batch: they compute no row but write every column's
        # placeholder, so all blocks keep one schema.
        start = time.perf_counter()
        batch = self.inner(batch)
        busy = time.perf_counter() - start
        # Waited for: the gate's next question must see this batch's charge.
        ray.get(self.ledger.add.remote(busy * self.num_gpus, busy * self.num_cpus))
        return batch


def deferred(status: np.ndarray) -> np.ndarray:
    """Return ``status`` with every ``ok`` row made ``deferred``."""
    status = np.asarray(status, dtype=object).copy()
    status[status == schema.Status.OK.value] = schema.Status.DEFERRED.value
    return status
