"""What a run costs, and when its budget is spent: busy time of the stages' actors times their reservation.

Counted: each model stage's busy seconds (the sum of its per-row ``<stage>_s`` column over the
rows a run wrote, summed per shard by the sink as ``busy_s``) times what the pool whose actors
run the stage reserves (``JobSpec.stage_hosts`` -> ``JobSpec.pools``: ``num_gpus``, ``num_cpus``);
image encoding counts only when it runs inside the last model actor (``placement.encode_images:
last_stage``). Not counted: a reservation's idle time (actors starting, loading models, waiting
for rows), the read, image-encoding and write tasks, and the driver. GPU-hours are
``busy_s x num_gpus / 3600``, CPU-hours ``busy_s x num_cpus / 3600``; with ``spec.cost`` each
hour has its price. The budget's ledger (``actors.budget``) charges the same product per batch.

This module imports no Ray: ``pixelmill validate`` and the report use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines import schema
from pipelines.spec import BudgetSpec, CostSpec, JobSpec

__all__ = ["COUNTED", "Reservation", "budget_reached", "cost_line", "price", "reservations", "run_cost"]

# Said in ``_run.json`` next to the figures, so a reader knows what they are.
COUNTED = "busy seconds of each stage's actors x the GPUs/CPUs their pool reserves; idle reservation not counted"
_HOUR_S = 3600.0


@dataclass(frozen=True)
class Reservation:
    """What one actor of a pool reserves while it computes a batch."""

    num_gpus: float
    num_cpus: float


def reservations(spec: JobSpec) -> dict[str, Reservation]:
    """Return, for each stage whose time an actor pool pays for, that pool's reservation (by stage name)."""
    pools, hosts = spec.pools(), dict(spec.stage_hosts())
    if spec.placement.encode_images == "last_stage":
        hosts[schema.IMAGE_ENCODE.name] = list(hosts.values())[-1]  # the last model stage's pool
    return {stage: Reservation(pools[host].num_gpus, pools[host].num_cpus) for stage, host in hosts.items()}


def price(prices: CostSpec, *, gpu_hours: float, cpu_hours: float) -> float:
    """Return what ``gpu_hours`` and ``cpu_hours`` cost at ``prices`` (in ``prices.currency``)."""
    return gpu_hours * prices.gpu_hour + cpu_hours * prices.cpu_hour


def budget_reached(budget: BudgetSpec, prices: CostSpec | None, *, gpu_hours: float, cpu_hours: float) -> bool:
    """Return whether any limit of ``budget`` is spent by ``gpu_hours`` and ``cpu_hours``."""
    if budget.gpu_hours is not None and gpu_hours >= budget.gpu_hours:
        return True
    if budget.cpu_hours is not None and cpu_hours >= budget.cpu_hours:
        return True
    return (budget.cost is not None and prices is not None
            and price(prices, gpu_hours=gpu_hours, cpu_hours=cpu_hours) >= budget.cost)


def run_cost(spec: JobSpec, busy_s: dict[str, float], *, images: int) -> dict[str, Any]:
    """Return a run's cost figures (``_run.json``'s ``cost``) from its busy seconds per stage.

    Args:
        busy_s: busy seconds by stage name, summed over the shards the run wrote; stages no pool
            pays for (image encoding in its own tasks) are left out.
        images: the images the run wrote.

    Returns:
        ``stages`` (per stage: ``busy_s``, ``num_gpus``, ``num_cpus``, ``gpu_hours``, ``cpu_hours``,
        ``cost``), the totals ``busy_s``, ``gpu_hours``, ``cpu_hours``, ``images``,
        ``images_per_gpu_hour`` (None without GPUs), and ``currency``, ``total``,
        ``per_1000_images`` (None without ``spec.cost``; the last also without images).
    """
    reserved = reservations(spec)
    stages: dict[str, dict[str, Any]] = {}
    for stage, seconds in busy_s.items():
        if stage not in reserved:
            continue
        pool = reserved[stage]
        gpu_hours, cpu_hours = seconds * pool.num_gpus / _HOUR_S, seconds * pool.num_cpus / _HOUR_S
        stages[stage] = {
            "busy_s": seconds, "num_gpus": pool.num_gpus, "num_cpus": pool.num_cpus,
            "gpu_hours": gpu_hours, "cpu_hours": cpu_hours,
            "cost": None if spec.cost is None else price(spec.cost, gpu_hours=gpu_hours, cpu_hours=cpu_hours),
        }
    gpu_hours = sum(entry["gpu_hours"] for entry in stages.values())
    cpu_hours = sum(entry["cpu_hours"] for entry in stages.values())
    total = None if spec.cost is None else price(spec.cost, gpu_hours=gpu_hours, cpu_hours=cpu_hours)
    return {
        "counted": COUNTED,
        "stages": stages,
        "busy_s": sum(entry["busy_s"] for entry in stages.values()),
        "gpu_hours": gpu_hours,
        "cpu_hours": cpu_hours,
        "images": images,
        "images_per_gpu_hour": images / gpu_hours if gpu_hours else None,
        "currency": None if spec.cost is None else spec.cost.currency,
        "total": total,
        "per_1000_images": total * 1000 / images if total is not None and images else None,
    }


def cost_line(cost: dict[str, Any]) -> str:
    """Return the one-line cost summary printed after a run's summary line."""
    text = (f"pixelmill: cost: {cost['busy_s']:.1f} busy s, {cost['gpu_hours']:.4g} GPU-hours, "
            f"{cost['cpu_hours']:.4g} CPU-hours")
    if cost["images_per_gpu_hour"] is not None:
        text += f", {cost['images_per_gpu_hour']:.4g} images/GPU-hour"
    if cost["total"] is not None:
        text += f", {cost['total']:.4g} {cost['currency']}"
        if cost["per_1000_images"] is not None:
            text += f" ({cost['per_1000_images']:.4g} {cost['currency']} per 1,000 images)"
    return text + " (busy time x reservation)"
