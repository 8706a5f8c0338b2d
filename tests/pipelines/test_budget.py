"""Cost figures of a real run, a budget stop (exit 4, the rest deferred) and its resume, on local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.cli import EXIT_BUDGET, EXIT_OK, main
from tests.pipelines.readback import check_exactly_once, read_output

ROWS = [{"id": f"b{i:02d}", "prompt": f"a red circle number {i}"} for i in range(12)]
PRICES = {"gpu_hour": 2.5, "cpu_hour": 0.04, "currency": "EUR"}


def _job(tmp_path: Path, name: str, input_uri: str, output_uri: str, model_cache: str, **extra) -> Path:
    raw = {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "samples_per_shard": 4},
        "model": {"cache_dir": model_cache},
        "defaults": {"width": 32, "height": 32, "steps": 1},
        # batches of 4 rows at the first model step (encode runs fused into the generate pool)
        "stages": {"generate": {"batch_size": 4, "num_cpus": 0.5}},
        "score": None,
        "cost": PRICES,
        **extra,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _check_cost(run: dict, stats: dict) -> None:
    cost = run["cost"]
    assert set(cost["stages"]) == {"encode", "generate"}
    for stage, entry in cost["stages"].items():
        # the run's busy seconds are its shards' sums of <stage>_s
        assert entry["busy_s"] == pytest.approx(sum(s["busy_s"][stage] for s in stats.values() if s["run_id"] ==
                                                    run["run_id"]))
        assert entry["busy_s"] > 0 and entry["num_cpus"] == 0.5 and entry["num_gpus"] == 0
        assert entry["cpu_hours"] == pytest.approx(entry["busy_s"] * 0.5 / 3600) and entry["gpu_hours"] == 0
        assert entry["cost"] == pytest.approx(entry["cpu_hours"] * PRICES["cpu_hour"])
    assert cost["cpu_hours"] == pytest.approx(sum(e["cpu_hours"] for e in cost["stages"].values()))
    assert cost["images"] == run["images"] and cost["images_per_gpu_hour"] is None  # no GPU reserved
    assert cost["currency"] == "EUR" and cost["total"] == pytest.approx(cost["cpu_hours"] * PRICES["cpu_hour"])
    assert cost["per_1000_images"] == pytest.approx(cost["total"] * 1000 / run["images"])


def test_a_spent_budget_defers_the_rest_and_a_resume_finishes_exactly_once(
    ray_session, write_prompts, tmp_path: Path, model_cache: str, capsys
) -> None:
    path = write_prompts(ROWS)
    out_dir = tmp_path / "out"
    # The first batch of 4 rows spends far more than this: every later batch is deferred at the gate.
    tight = _job(tmp_path, "tight.yaml", str(path), str(out_dir), model_cache, budget={"cpu_hours": 1e-9})
    assert main(["run", str(tight)]) == EXIT_BUDGET
    captured = capsys.readouterr()
    assert "deferred (budget spent)" in captured.out and "pixelmill: cost: " in captured.out
    assert "the budget is spent" in captured.err

    first = read_output(str(out_dir))
    run = first["run"]
    assert run["budget_spent"] and run["budget"]["reached"] and run["budget"]["limits"]["cpu_hours"] == 1e-9
    assert run["budget"]["cpu_hours"] > 1e-9  # the batch past the gate finished: the overshoot
    assert run["balanced"] and "deferred" in run["equation"]
    assert 4 <= run["images"] < len(ROWS) and run["errors"] == 0
    assert run["images"] + run["deferred"] == len(ROWS)
    # deferred rows are in no shard and no errors table; stats count them; no empty shard, only whole ones
    assert all(row["status"] == "ok" for row in first["rows"]) and not first["errors"]
    assert len(first["rows"]) == run["images"]
    assert sum(s.get("deferred", 0) for s in first["stats"].values()) <= run["deferred"]
    assert all(s["count"] > 0 for s in first["stats"].values())
    _check_cost(run, first["stats"])
    report = (out_dir / "report.html").read_text()
    assert 'id="cost-cpu-hours"' in report and "rows deferred to a later run" in report
    assert f'id="count-deferred">{run["deferred"]}<' in report

    # Same job without a budget: the resume does the deferred rows, and nothing twice.
    free = _job(tmp_path, "free.yaml", str(path), str(out_dir), model_cache)
    assert main(["run", str(free)]) == EXIT_OK
    done = read_output(str(out_dir))
    check_exactly_once(done, [row["id"] for row in ROWS])
    again = done["run"]
    assert again["balanced"] and again["skipped"] == run["images"] and again["images"] == run["deferred"]
    assert again["deferred"] == 0 and not again["budget_spent"] and again["budget"] is None
    _check_cost(again, done["stats"])
    history = [json.loads(p.read_text()) for p in (out_dir / "_runs").glob("*.json")]
    assert sorted(r["budget_spent"] for r in history) == [False, True]
