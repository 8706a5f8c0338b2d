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
