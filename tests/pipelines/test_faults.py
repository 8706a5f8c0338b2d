"""Faults survived: drivers and actors killed, sticky device errors, hangs.

Each faulty run is a separate driver process (``pixelmill run``) joined to the
session's Ray runtime, with fault rules in ``PIXELMILL_FAULTS`` (see
``pipelines.faults``); a killed driver is really SIGKILLed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.layout import OutputLayout
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output

REPO = Path(__file__).resolve().parents[2]
ROWS = [{"id": f"p{i:02d}", "prompt": f"a {['red', 'green', 'blue'][i % 3]} shape number {i}"} for i in range(24)]
ROWS[5]["prompt"] = ""  # one error record, so error rows are checked for exactly-once too
PER_SHARD = 4


def _raw(input_uri: str, output_uri: str, model_cache: str) -> dict:
    return {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "samples_per_shard": PER_SHARD},
        "model": {"cache_dir": model_cache},
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "stages": {"encode": {"batch_size": 4}, "generate": {"batch_size": 4}},
        "seed": 5,
    }


@pytest.fixture
def job(ray_session, tmp_path: Path, write_prompts, model_cache: str):
    """Write the prompts and a job YAML; return a runner of ``pixelmill`` driver processes."""
    import ray

    address = ray.get_runtime_context().gcs_address

    def run(output_uri: str, *, input_uri: str | None = None, faults: list | None = None,
            sets: tuple[str, ...] = (), timeout: float = 240) -> subprocess.CompletedProcess:
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(_raw(input_uri or str(prompts), output_uri, model_cache)))
        env = {k: v for k, v in os.environ.items() if k != "PIXELMILL_FAULTS"}
        if faults:
            env["PIXELMILL_FAULTS"] = json.dumps(faults)
        command = [sys.executable, "-m", "pipelines.cli", "run", str(path), "--set", f"ray.address={address}",
                   "--min-success-rate", "0.9"]
        for assignment in sets:
            command += ["--set", assignment]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    prompts = write_prompts(ROWS, "prompts.jsonl")
    run.prompts = prompts
    return run


def _images_by_id(out: dict) -> dict[str, bytes]:
    return {sample["json"]["id"]: sample["image_bytes"] for sample in out["samples"]}


def _fail(result: subprocess.CompletedProcess, out_dir: Path | None = None) -> str:
    reasons = ""
    if out_dir is not None and (out_dir / "_run.json").exists():
        reasons = json.dumps(json.loads((out_dir / "_run.json").read_text())["errors_by_reason"])
    return f"exit {result.returncode} {reasons}\n{result.stderr[-3000:]}"


def test_driver_killed_at_three_points_then_rerun(job, s3, tmp_path: Path, model_cache: str) -> None:
    s3.put(str(job.prompts), "pixelmill/in/prompts.jsonl")
    source = "s3://pixelmill/in/prompts.jsonl"
    baseline = run_job(load_spec(raw=_raw(source, "s3://pixelmill/base", model_cache)))
    assert baseline.balanced and baseline.images == 23
    expected = _images_by_id(read_output("s3://pixelmill/base"))

    out_uri = "s3://pixelmill/out"
    spec = load_spec(raw=_raw(source, out_uri, model_cache))
    # Kill points, in the shards the next attempt writes: before the first commit, mid-way
    # (tar and Parquet published, stats not yet), and during the last shard.
    kills = [("sink:before_publish", "first"), ("sink:after_publish", "middle"), ("sink:before_publish", "last")]
    for point, which in kills:
        layout = OutputLayout(spec.output.uri, spec.storage_options)
        committed = layout.committed_shards()
        done = sum(layout.read_stats(n)["count"] for n in committed)
        new_shards = math.ceil((len(ROWS) - done) / PER_SHARD)
        assert new_shards >= 2, "each kill must leave work for the next attempt"
        # Shard numbers may skip (empty blocks write nothing): count this attempt's shard writes instead.
        nth = {"first": 1, "middle": new_shards // 2 + 1, "last": new_shards}[which]
        counter = str(tmp_path / f"writes-{which}")
        kill = {"at": point, "do": "kill_driver", "nth": nth, "count_dir": counter}
        result = job(out_uri, input_uri=source, faults=[kill])
        assert result.returncode == -signal.SIGKILL, _fail(result)
        s3.invalidate_cache()
        if point == "sink:after_publish":  # a published shard without its commit marker is left behind ...
            tars = {int(p.rsplit("/", 1)[-1][:5]) for p in s3.glob("pixelmill/out/*.tar")}
            committed_now = set(OutputLayout(spec.output.uri, spec.storage_options).committed_shards())
            assert tars - committed_now, "the killed attempt left no uncommitted tar"
    result = job(out_uri, input_uri=source)
    assert result.returncode == 0, _fail(result)
    s3.invalidate_cache()
    out = read_output(out_uri)  # ... and removed by the rerun (check_exactly_once: every tar has stats)
    check_exactly_once(out, [row["id"] for row in ROWS])
    assert _images_by_id(out) == expected  # byte-identical to the uninterrupted run
    assert out["run"]["balanced"] and out["run"]["skipped"] > 0
    assert not s3.exists("pixelmill/out/_tmp")


def test_actor_killed_and_sticky_device_error(job, tmp_path: Path) -> None:
    faults = [
        {"at": "stage:encode", "do": "exit", "nth": 2, "once": str(tmp_path / "encode-killed")},
        {"at": "stage:generate", "do": "cuda_error", "nth": 2, "once": str(tmp_path / "cuda-error")},
    ]
    result = job(str(tmp_path / "out"), faults=faults)
    assert result.returncode == 0, _fail(result, tmp_path / "out")
    assert (tmp_path / "encode-killed").exists() and (tmp_path / "cuda-error").exists()  # both faults fired
    out = read_output(str(tmp_path / "out"))
    check_exactly_once(out, [row["id"] for row in ROWS])
    assert len(out["samples"]) == 23 and [row["id"] for row in out["errors"]] == ["p05"]
    assert "sticky device error" in result.stdout + result.stderr  # the actor left so Ray would restart it


def test_watchdog_stops_a_hung_run_and_rerun_resumes(job, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    hang = [{"at": "stage:generate", "do": "hang", "nth": 3}]
    result = job(str(out_dir), faults=hang, sets=("ray.stall_timeout_s=12",), timeout=180)
    assert result.returncode == 3, _fail(result)
    # The watchdog fired for the stall. The run then stops by the interrupt ("no shard committed for
    # 12 s") or, if the main thread is stuck past the grace period, by the watchdog's own exit 3:
    # both leave a resumable output (seen in full-suite runs, where the driver waited on actor slots)
    assert "no progress for 12 s, stopping the run" in result.stderr, _fail(result)
    assert "no shard committed for 12 s" in result.stderr or "the run did not stop, exiting" in result.stderr
    result = job(str(out_dir))
    assert result.returncode == 0, _fail(result, out_dir)
    out = read_output(str(out_dir))
    check_exactly_once(out, [row["id"] for row in ROWS])
    assert out["run"]["balanced"]
