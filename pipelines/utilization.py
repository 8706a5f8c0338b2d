"""Where a model pool's time goes: busy, waiting for input, and the wait for its first batch, per actor.

Each model pool's actor (``actors.metered.MeteredPool``, around the pool's callable) times every
call and writes its figures on the batch's rows as internal columns (:func:`columns`): its actor
id and each row's share of the batch's busy seconds, of the wait before the batch, and (the first
batch's rows only) of the start-up wait and the constructor's seconds. The sink sums them per actor
into the shard's stats (:func:`shard_figures`) and drops the columns; ``RunSummary.add_shards`` folds the shards into
``_run.json``'s ``utilization`` (:func:`merge`).

Why rows, not a named actor like the budget ledger: the figures travel with the rows through
the channel the ``<stage>_s`` timings already use, so there is no remote call per batch, no actor
to start before the pools, and a batch redone after a crash is counted once, by the actor whose
rows were committed. A share per row sums back to the batch's exact seconds whatever the
repartition does with the rows. This module imports no Ray.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from pipelines.schema import UTILIZATION_PREFIX

__all__ = ["FIGURES", "UtilizationColumns", "columns", "merge", "shard_figures", "without_columns"]

# Seconds one actor spent, summed over its batches (each batch's wait is the gap before it); ``init_s``:
# its constructor (the model load), carried by its first batch's rows like ``first_batch_wait_s``.
FIGURES: tuple[str, ...] = ("busy_s", "wait_s", "first_batch_wait_s", "init_s")
_ACTOR = "actor"
_SEP = ":"


class UtilizationColumns(NamedTuple):
    """The internal columns one pool writes on every row it returns."""

    actor: str
    busy_s: str
    wait_s: str
    first_batch_wait_s: str
    init_s: str


def columns(pool: str) -> UtilizationColumns:
    """Return the internal column names of pool ``pool`` (``_pm_util:<pool>:<figure>``)."""
    return UtilizationColumns(*(f"{UTILIZATION_PREFIX}{pool}{_SEP}{name}" for name in (_ACTOR, *FIGURES)))


def _pools(names: list[str]) -> list[str]:
    suffix = _SEP + _ACTOR
    return [name[len(UTILIZATION_PREFIX):-len(suffix)] for name in names
            if name.startswith(UTILIZATION_PREFIX) and name.endswith(suffix)]


def shard_figures(table: pa.Table) -> dict[str, dict[str, dict[str, float]]]:
    """Return the pools' figures on ``table``'s rows: ``{pool: {actor: {rows, busy_s, wait_s, first_batch_wait_s}}}``.

    Rows without an actor id (a block that met no pool) count nowhere.
    """
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for pool in _pools(table.column_names):
        names = columns(pool)
        actors = table.column(names.actor).to_pylist()
        values = {figure: table.column(getattr(names, figure)).to_numpy(zero_copy_only=False).astype(np.float64)
                  for figure in FIGURES}
        per_actor: dict[str, dict[str, float]] = {}
        for actor in sorted({a for a in actors if a}):
            mask = np.array([a == actor for a in actors])
            per_actor[actor] = {"rows": int(mask.sum()),
                                **{figure: round(float(np.nansum(values[figure][mask])), 6) for figure in FIGURES}}
        figures[pool] = per_actor
    return figures


def without_columns(table: pa.Table) -> pa.Table:
    """Return ``table`` without the utilization columns (they are never written)."""
    return table.drop_columns([name for name in table.column_names if name.startswith(UTILIZATION_PREFIX)])


def merge(record: dict[str, Any], shard: dict[str, dict[str, dict[str, float]]] | None) -> None:
    """Add one shard's figures (:func:`shard_figures`) to a run's ``utilization`` record, in place.

    The record holds per pool: ``actors``, ``rows``, the summed :data:`FIGURES`, ``busy_fraction``
    (busy / (busy + waits between batches): the steady state), ``busy_fraction_with_start`` (the
    first batch's wait counted too), and ``per_actor`` (the same figures for each actor).
    """
    for pool, per_actor in (shard or {}).items():
        entry = record.setdefault(pool, {"per_actor": {}})
        for actor, figures in per_actor.items():
            mine = entry["per_actor"].setdefault(actor, {"rows": 0, **dict.fromkeys(FIGURES, 0.0)})
            for name, value in figures.items():
                if name in mine:
                    mine[name] = round(mine[name] + value, 6)
            mine.update(_fractions(mine))
        actors = entry["per_actor"].values()
        totals = {name: round(sum(a[name] for a in actors), 6) for name in ("rows", *FIGURES)}
        entry.update(actors=len(entry["per_actor"]), **totals, **_fractions(totals))


def _fractions(figures: dict[str, float]) -> dict[str, float | None]:
    busy, wait, first = (figures[name] for name in FIGURES[:3])
    return {"busy_fraction": round(busy / (busy + wait), 4) if busy + wait > 0 else None,
            "busy_fraction_with_start": round(busy / (busy + wait + first), 4) if busy + wait + first > 0 else None}

