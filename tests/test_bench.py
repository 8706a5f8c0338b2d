"""The benchmark harness runs and reports what it measured (its numbers are never asserted: noisy machines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sink_benchmark_runs_and_writes_its_ratio(tmp_path) -> None:
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PIXELMILL_BENCH_RESULTS": str(tmp_path)}
    env.pop("AWS_ENDPOINT_URL", None)  # the benchmark starts its own moto server and Ray
    done = subprocess.run(
        [sys.executable, "-m", "bench.sink", "--rows", "24", "--per-shard", "8", "--side", "16"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sink / raw MB/s" in done.stdout
    with open(tmp_path / "sink.json") as handle:
        result = json.load(handle)
    sink_row, raw_row = result["table"]
    assert sink_row["files"] == raw_row["files"] == 3 * 3  # tar + Parquet + stats for each of 3 shards
    assert result["ratios"]["sink / raw MB/s"]["value"] > 0
    assert sink_row["cpu_s_ray_workers"] > 0 and raw_row["cpu_s_moto"] > 0  # the CPU profile was taken
    assert len(result["task_start_s"]) == 3


def test_regenerate_benchmark_runs_both_designs_and_the_adherence_table(tmp_path) -> None:
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PIXELMILL_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.regenerate", "--rows", "4", "--size", "32", "--steps", "1",
         "--min-score", "38", "--repeats", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "regenerate.json") as handle:
        result = json.load(handle)
    assert result["same_images"] is True  # the chained passes choose what the loop chooses
    assert [row["design"] for row in result["table"]] == ["one actor (regenerate loop)", "4 chained passes"]
    assert [(row["max_attempts"], row["min_score"]) for row in result["adherence"]] == [
        (1, None), (1, 38.0), (2, 38.0), (4, 38.0)]
    draws = [row["attempts_per_row"] for row in result["adherence"]]
    assert draws[0] == draws[1] == 1.0 and 1.0 <= draws[2] <= 2.0 and draws[2] <= draws[3] <= 4.0
