"""A worker node dies mid-run on a three-node ``ray.cluster_utils.Cluster``: every row still lands once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.pipelines.readback import check_exactly_once, read_output

REPO = Path(__file__).resolve().parents[2]


def test_node_removed_mid_run(tmp_path: Path, write_prompts, model_cache: str) -> None:
    rows = [{"id": f"n{i:02d}", "prompt": f"a shape number {i}"} for i in range(32)]
    prompts = write_prompts(rows, "prompts.jsonl")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "input": {"uri": str(prompts)},
        "output": {"uri": str(tmp_path / "out"), "samples_per_shard": 4},
        "model": {"cache_dir": model_cache},
        "defaults": {"width": 32, "height": 32, "steps": 2},
        "stages": {"encode": {"batch_size": 4}, "generate": {"batch_size": 4}},
    }))
    result = subprocess.run(
        [sys.executable, "-m", "tests.pipelines.node_loss_scenario", str(job)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["run_alive_at_removal"] and report["committed_before_removal"] < 8, report  # really mid-run
    assert report["finished"] and report["summary"]["balanced"], report
    assert report["summary"]["images"] == 32
    check_exactly_once(read_output(str(tmp_path / "out")), [row["id"] for row in rows])
