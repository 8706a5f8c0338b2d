"""Cost figures and the budget's test (``pipelines.cost``), and the budget ledger's arithmetic, without Ray."""

from __future__ import annotations

import pytest

from actors.budget import Ledger, deferred
from pipelines.cost import budget_reached, cost_line, reservations, run_cost
from pipelines.spec import BudgetSpec, CostSpec, load_spec

BASE = {"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}, "score": None}


def _spec(**raw):
    return load_spec(raw={**BASE, **raw})


def test_a_fused_encode_pays_with_the_generate_pool_and_each_pool_with_its_own_reservation() -> None:
    spec = _spec(stages={"generate": {"num_gpus": 1, "num_cpus": 4}, "score": {"num_gpus": 0.5, "num_cpus": 1}},
                 score={})
    pools = reservations(spec)
    assert (pools["encode"].num_gpus, pools["encode"].num_cpus) == (1, 4)  # fused: the generate actors' reservation
    assert (pools["score"].num_gpus, pools["score"].num_cpus) == (0.5, 1)
    assert "image_encode" not in pools  # its own CPU tasks: no pool pays for it
    unfused = reservations(_spec(placement={"fuse_encode_generate": False, "encode_images": "last_stage"},
                                 stages={"encode": {"num_cpus": 2}, "generate": {"num_cpus": 3}}))
    assert unfused["encode"].num_cpus == 2 and unfused["generate"].num_cpus == 3
    assert unfused["image_encode"].num_cpus == 3  # inside the last model actor


def test_run_cost_is_busy_time_times_reservation_at_the_prices() -> None:
    spec = _spec(stages={"generate": {"num_gpus": 2, "num_cpus": 4}},
                 cost={"gpu_hour": 3.0, "cpu_hour": 0.5, "currency": "EUR"})
    cost = run_cost(spec, {"encode": 360.0, "generate": 3240.0, "image_encode": 99.0}, images=500)
    assert set(cost["stages"]) == {"encode", "generate"}  # image encoding ran in tasks
    generate = cost["stages"]["generate"]
    assert generate["gpu_hours"] == pytest.approx(3240 * 2 / 3600) and generate["cpu_hours"] == pytest.approx(3.6)
    assert generate["cost"] == pytest.approx(1.8 * 3.0 + 3.6 * 0.5)
    assert cost["busy_s"] == 3600.0 and cost["gpu_hours"] == pytest.approx(2.0) and cost["cpu_hours"] == 4.0
    assert cost["total"] == pytest.approx(2 * 3.0 + 4 * 0.5) and cost["currency"] == "EUR"
    assert cost["per_1000_images"] == pytest.approx(8.0 * 1000 / 500)
    assert cost["images_per_gpu_hour"] == pytest.approx(250.0)
    assert "8 EUR (16 EUR per 1,000 images)" in cost_line(cost)


def test_without_gpus_or_prices_those_figures_are_null() -> None:
    cost = run_cost(_spec(), {"generate": 7.2}, images=3)
    assert cost["gpu_hours"] == 0 and cost["images_per_gpu_hour"] is None
    assert cost["cpu_hours"] == pytest.approx(7.2 * 0.5 / 3600)
    assert cost["total"] is None and cost["per_1000_images"] is None and cost["currency"] is None
    assert "images/GPU-hour" not in cost_line(cost)
    no_images = run_cost(_spec(cost={"cpu_hour": 1.0}), {}, images=0)
    assert no_images["total"] == 0 and no_images["per_1000_images"] is None


def test_a_budget_is_spent_when_any_of_its_limits_is() -> None:
    prices = CostSpec(gpu_hour=2.0, cpu_hour=0.1)
    assert not budget_reached(BudgetSpec(gpu_hours=1.0), prices, gpu_hours=0.99, cpu_hours=100)
    assert budget_reached(BudgetSpec(gpu_hours=1.0), prices, gpu_hours=1.0, cpu_hours=0)
    assert budget_reached(BudgetSpec(gpu_hours=9, cpu_hours=2.0), prices, gpu_hours=0, cpu_hours=2.5)
    assert budget_reached(BudgetSpec(cost=1.0), prices, gpu_hours=0.4, cpu_hours=2.0)  # 0.8 + 0.2
    assert not budget_reached(BudgetSpec(cost=1.0), prices, gpu_hours=0.4, cpu_hours=1.0)


def test_a_budget_cost_needs_prices() -> None:
    with pytest.raises(Exception, match="budget.cost needs cost"):
        _spec(budget={"cost": 10})


def test_the_ledger_adds_batches_until_the_budget_is_spent() -> None:
    ledger = Ledger(budget=BudgetSpec(cpu_hours=1.0), prices=CostSpec(cpu_hour=2.0))
    assert not ledger.add(0.0, 1800.0) and not ledger.reached()
    assert ledger.add(0.0, 1800.0) and ledger.reached()
    assert ledger.spent() == {"gpu_hours": 0.0, "cpu_hours": 1.0, "cost": 2.0, "reached": True}


def test_deferring_touches_only_ok_rows() -> None:
    import numpy as np

    status = np.array(["ok", "error", "ok", "filtered"], dtype=object)
    assert deferred(status).tolist() == ["deferred", "error", "deferred", "filtered"]
    assert status.tolist() == ["ok", "error", "ok", "filtered"]  # a new array
