"""Several images per prompt, end to end on real parts: local Ray, the built-in model, local folders.

Sample ids ``<id>/<k>``, child seeds and images, image 0 equal to an ``images_per_prompt: 1`` run,
per-row counts (a bad one is one error record), duplicates, resume, and ``retry-errors`` of one
child, each checked the way consumers read the output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pipelines.cli import main
from pipelines.rows import child_seed, derive_seed
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output

REPO = Path(__file__).resolve().parents[2]
SEED = 13


def _raw(input_uri: str, output_uri: str, model_cache: str, **extra: Any) -> dict[str, Any]:
    return {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "samples_per_shard": 4, "report": False},
        "model": {"cache_dir": model_cache},
        "score": None,
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "stages": {"encode": {"batch_size": 4}, "generate": {"batch_size": 4}},
        "seed": SEED,
        **extra,
    }


def _images(out: dict) -> dict[str, bytes]:
    return {sample["json"]["id"]: sample["image_bytes"] for sample in out["samples"]}


def test_three_images_per_prompt(ray_session, tmp_path: Path, write_prompts, model_cache: str) -> None:
    rows = [{"id": "a", "prompt": "a red circle", "campaign": "x"},
            {"id": "b", "prompt": "a green square", "campaign": "y", "seed": 7},
            {"id": "a", "prompt": "a blue star", "campaign": "z"}]  # a later occurrence of a
    prompts = write_prompts(rows)
    one = run_job(load_spec(raw=_raw(str(prompts), str(tmp_path / "one"), model_cache)), mode="overwrite")
    assert one.images == 2 and one.prompts is None
    single = _images(read_output(str(tmp_path / "one")))

    spec = load_spec(raw=_raw(str(prompts), str(tmp_path / "three"), model_cache, images_per_prompt=3))
    summary = run_job(spec, mode="overwrite")
    out = read_output(str(tmp_path / "three"))
    assert summary.balanced and summary.input_rows == 9 and summary.images == 6 and summary.errors == 3
    assert out["run"]["prompts"] == 3 and out["run"]["images_per_prompt"] == 3
    assert "(samples of 3 prompts, images_per_prompt 3)" in summary.line()
    images = _images(out)
    assert sorted(images) == ["a/0", "a/1", "a/2", "b/0", "b/1", "b/2"]
    assert len(set(images.values())) == 6  # every child its own image
    assert images["a/0"] == single["a"] and images["b/0"] == single["b"]  # image 0 is the N=1 image
    samples = {s["json"]["id"]: s["json"] for s in out["samples"]}
    for parent, row_seed in (("a", derive_seed(SEED, "a")), ("b", 7)):
        for k in range(3):
            sample = samples[f"{parent}/{k}"]
            assert (sample["parent_id"], sample["image_index"]) == (parent, k)
            assert sample["seed"] == child_seed(row_seed, k)
    # the later occurrence of a: a duplicate record per child, none fanned out twice
    duplicates = sorted(r["id"] for r in out["rows"] if r["stage"] == "duplicate")
    assert duplicates == ["a/0", "a/1", "a/2"]
    assert all(r["campaign"] == "z" for r in out["rows"] if r["stage"] == "duplicate")


def test_per_row_counts_resume_and_retry(ray_session, tmp_path: Path, write_prompts, model_cache: str) -> None:
    rows = [{"id": "r0", "prompt": "a red circle", "n": "2"}, {"id": "r1", "prompt": "a green square"},
            {"id": "r2", "prompt": "a blue star", "n": "0"}, {"id": "r3", "prompt": "a white square", "n": "x"},
            {"id": "r4", "prompt": "a yellow triangle", "n": "3"}, {"id": "r5", "prompt": "two circles", "n": "1"}]
    prompts = write_prompts(rows)
    out_uri = str(tmp_path / "out")
    raw = _raw(str(prompts), out_uri, model_cache, input={"uri": str(prompts), "columns": {"images_per_prompt": "n"}})
    first = run_job(load_spec(raw={**raw, "limit": 3}), mode="overwrite")  # r0, r1, r2: a partial run
    assert first.balanced and first.input_rows == 4 and first.prompts == 3

    summary = run_job(load_spec(raw=raw), mode="resume")
    ids = ["r0/0", "r0/1", "r1/0", "r2", "r3", "r4/0", "r4/1", "r4/2", "r5/0"]
    assert summary.balanced and summary.input_rows == len(ids) and summary.prompts == 6
    assert summary.skipped == 4 and summary.images == 4 and summary.errors == 1
    out = read_output(out_uri)
    check_exactly_once(out, ids)
    reasons = {r["id"]: r["error"] for r in out["errors"]}
    assert reasons == {"r2": "images_per_prompt must be in [1, 1000], got 0",
                       "r3": "images_per_prompt must be a number, got 'x'"}
    assert all(r["stage"] == "input" for r in out["errors"])

    # retry-errors: the records fail again with the same reasons, never fanned out
    assert main(["retry-errors", out_uri, "--min-success-rate", "0"]) == 0
    again = read_output(out_uri)
    check_exactly_once(again, ids)
    assert {r["id"]: r["error"] for r in again["errors"]} == reasons
    assert again["run"]["input_rows"] == 2 and again["run"]["balanced"]


def test_retry_errors_retries_one_child(ray_session, tmp_path: Path, write_prompts, model_cache: str) -> None:
    """A driver whose first generate call on "flaky" raises: one child of that prompt fails; the retry does it alone."""
    import ray

    rows = [{"id": "f", "prompt": "a flaky red circle"}, {"id": "g", "prompt": "a green square"}]
    prompts = write_prompts(rows)
    out_uri = str(tmp_path / "out")
    raw = _raw(str(prompts), out_uri, model_cache, images_per_prompt=3)
    raw["stages"]["generate"]["batch_size"] = 1  # one child per call: the fault hits exactly one
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    faults = [{"at": "stage:generate", "do": "raise", "prompt": "flaky", "nth": 1, "count_dir": str(tmp_path / "n")}]
    env = {**os.environ, "PIXELMILL_FAULTS": json.dumps(faults)}
    command = [sys.executable, "-m", "pipelines.cli", "run", str(job), "--min-success-rate", "0",
               "--set", f"ray.address={ray.get_runtime_context().gcs_address}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ids = [f"{parent}/{k}" for parent in ("f", "g") for k in range(3)]
    out = read_output(out_uri)
    check_exactly_once(out, ids)
    (record,) = out["errors"]
    assert record["stage"] == "generate" and record["parent_id"] == "f" and record["id"].startswith("f/")

    assert main(["retry-errors", out_uri, "--min-success-rate", "0"]) == 0
    again = read_output(out_uri)
    check_exactly_once(again, ids)
    assert not again["errors"] and len(again["samples"]) == 6
    assert again["run"]["input_rows"] == 1 and again["run"]["images"] == 1
    retried = next(s["json"] for s in again["samples"] if s["json"]["id"] == record["id"])
    assert (retried["parent_id"], retried["image_index"], retried["seed"]) == (
        "f", record["image_index"], child_seed(derive_seed(SEED, "f"), record["image_index"])
    )
