"""End to end on real parts: local Ray, the built-in diffusers model, local folders and moto S3."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.cli import main
from pipelines.layout import shard_name
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import read_output

ROWS = [
    {"id": "r0", "prompt": "a red circle on a blue background", "campaign": "spring"},
    {"id": "r1", "prompt": "a small green square", "campaign": "spring", "seed": 7},
    {"id": "r2", "prompt": "", "campaign": "spring"},
    {"id": "r3", "prompt": "a yellow triangle at the top", "campaign": "fall", "width": 32, "height": 48},
    {"id": "r4", "prompt": "a purple star", "campaign": "fall", "negative_prompt": "blurry"},
    {"id": "r5", "prompt": "two orange circles", "campaign": "fall", "width": 60},
    {"id": "r6", "prompt": "a white square on black", "campaign": "fall"},
]
GOOD_IDS = {"r0", "r1", "r3", "r4", "r6"}


def _spec(input_uri: str, output_uri: str, model_cache: str, **sets):
    raw = {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "samples_per_shard": 3},
        "model": {"cache_dir": model_cache},
        "stages": {"encode": {"batch_size": 4}, "generate": {"batch_size": 2}},
        "seed": 11,
    }
    return load_spec(raw=raw, sets=[f"{k}={v}" for k, v in sets.items()])


def _check_output(out: dict, *, input_rows: list[dict]) -> None:
    by_id = {row["id"]: row for row in input_rows}
    # Parquet: one row per input row, failures included with their reason.
    rows = {row["id"]: row for row in out["rows"]}
    assert set(rows) == set(by_id)
    assert rows["r2"]["status"] == "error" and rows["r2"]["stage"] == "input"
    assert rows["r2"]["error"] == "prompt is empty"
    assert rows["r5"]["status"] == "error" and "multiple of 8" in rows["r5"]["error"]
    for row_id in GOOD_IDS:
        row = rows[row_id]
        assert row["status"] == "ok", row
        assert row["prompt"] == by_id[row_id]["prompt"]
        assert row["campaign"] == by_id[row_id]["campaign"]
        assert row["model"] == "builtin:shapes-sd" and len(row["model_hash"]) == 16
        assert row["scheduler"] and row["steps"] == 2 and row["guidance"] == 1.0
        assert row["generate_s"] > 0
    assert rows["r1"]["seed"] == 7
    assert rows["r4"]["negative_prompt"] == "blurry"
    # Tars: only successful rows, images at the requested size, metadata matching Parquet.
    samples = {s["json"]["id"]: s for s in out["samples"]}
    assert set(samples) == GOOD_IDS
    assert len(out["samples"]) == len(GOOD_IDS)
    for row_id, sample in samples.items():
        want = (by_id[row_id].get("width", 64), by_id[row_id].get("height", 64))
        assert sample["image"].size == want
        assert sample["image"].format == "PNG"
        assert sample["txt"] == by_id[row_id]["prompt"]
        assert sample["key"] == rows[row_id]["key"]
        assert sample["url"].endswith(shard_name(rows[row_id]["shard"]) + ".tar")
        assert sample["json"]["sha256"] == rows[row_id]["sha256"]
        assert sample["json"]["campaign"] == by_id[row_id]["campaign"]
        assert 0 <= sample["json"]["clip_score"] <= 100
        assert sample["json"]["clip_score"] == rows[row_id]["clip_score"]
    # Three rows per shard -> shards 00000..00002, each with its stats file.
    assert [p.rsplit("/", 1)[-1] for p in out["tars"]] == ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(out["stats"]) == ["00000_stats.json", "00001_stats.json", "00002_stats.json"]
    assert sum(s["count"] for s in out["stats"].values()) == len(input_rows)
    assert sum(s["failures"] for s in out["stats"].values()) == 2
    assert out["run"]["rows"] == len(input_rows)
    assert out["run"]["images"] == len(GOOD_IDS) and out["run"]["errors"] == 2
    assert not any("/_tmp" in p for p in out["all_files"])
    assert any(p.endswith("/report.html") for p in out["all_files"])


def test_local_folder_end_to_end(ray_session, write_prompts, tmp_path: Path, model_cache: str) -> None:
    path = write_prompts(ROWS, "prompts.jsonl")
    summary = run_job(_spec(str(path), str(tmp_path / "out"), model_cache))
    assert (summary.rows, summary.images, summary.errors) == (7, 5, 2)
    out = read_output(str(tmp_path / "out"))
    _check_output(out, input_rows=ROWS)
    # Each model pool's actors (pipelines.utilization): every row went through each pool once.
    pools = out["run"]["utilization"]
    assert set(pools) == {"encode+generate", "score"}
    for pool in pools.values():
        assert pool["rows"] == summary.images + summary.errors == sum(a["rows"] for a in pool["per_actor"].values())
        assert 0 < pool["busy_fraction"] <= 1 and pool["busy_s"] > 0 and pool["actors"] == len(pool["per_actor"])
    assert not any(name.startswith("_pm_") for row in out["rows"] for name in row)  # summed, then dropped
    assert 'id="utilization"' in (tmp_path / "out" / "report.html").read_text()


def test_s3_end_to_end(ray_session, s3, write_prompts, model_cache: str, monkeypatch) -> None:
    local = write_prompts(ROWS, "prompts.parquet")
    s3.put(str(local), "pixelmill/prompts/2026-11-28/prompts.parquet")
    spec = _spec("s3://pixelmill/prompts/2026-11-28/", "s3://pixelmill/images/2026-11-28", model_cache)
    summary = run_job(spec)
    assert summary.images == 5
    out = read_output("s3://pixelmill/images/2026-11-28")
    _check_output(out, input_rows=ROWS)
    run_json = json.dumps(out["run"])
    assert "testing-secret" not in run_json


def test_secrets_in_storage_options_are_redacted(ray_session, s3, write_prompts, model_cache: str) -> None:
    local = write_prompts(ROWS[:2], "prompts.jsonl")
    s3.put(str(local), "pixelmill/in/prompts.jsonl")
    spec = _spec(
        "s3://pixelmill/in/prompts.jsonl",
        "s3://pixelmill/out",
        model_cache,
        **{"storage_options.secret": "testing-secret", "storage_options.key": "testing"},
    )
    run_job(spec)
    run = read_output("s3://pixelmill/out")["run"]
    assert run["spec"]["storage_options"] == {"secret": "***", "key": "***"}
    assert run["images"] == 2


def test_images_do_not_depend_on_batching(ray_session, write_prompts, tmp_path: Path, model_cache: str) -> None:
    rows = [{"prompt": f"a red circle number {i}", "width": 32 + 8 * (i % 2)} for i in range(6)]
    path = write_prompts(rows, "prompts.csv")
    first = _spec(str(path), str(tmp_path / "a"), model_cache, **{
        "stages.encode.batch_size": 1, "stages.generate.batch_size": 1, "stages.generate.micro_batch_size": 1,
        "output.samples_per_shard": 2})
    # batch_size auto: Ray hands 32 rows, the micro-batch is searched and gives micro-batch 1's bytes
    second = _spec(str(path), str(tmp_path / "b"), model_cache, **{
        "stages.encode.batch_size": 6, "stages.generate.batch_size": "auto",
        "stages.generate.concurrency": 2, "ray.preserve_order": False, "output.samples_per_shard": 5})
    run_job(first)
    run_job(second)
    outputs = [read_output(str(tmp_path / name)) for name in "ab"]
    digests = [{row["id"]: row["sha256"] for row in out["rows"]} for out in outputs]
    assert len(digests[0]) == 6 and all(digests[0].values())
    assert digests[0] == digests[1]
    assert len(set(digests[0].values())) == 6
    # _run.json records the micro-batch of each shape: 1 as set, and what auto picked (1-32)
    shapes = {"32x64/2 steps/guidance 1.0", "40x64/2 steps/guidance 1.0"}
    assert outputs[0]["run"]["micro_batch"] == dict.fromkeys(shapes, 1)
    picked = outputs[1]["run"]["micro_batch"]
    assert set(picked) == shapes and all(1 <= size <= 32 for size in picked.values())
    assert {label: sum(sizes.values()) for label, sizes in outputs[1]["run"]["micro_batch_rows"].items()} == (
        dict.fromkeys(shapes, 3))


def test_output_modes(ray_session, write_prompts, tmp_path: Path, model_cache: str) -> None:
    path = write_prompts(ROWS[:3], "prompts.jsonl")
    out_dir = tmp_path / "out"
    spec = _spec(str(path), str(out_dir), model_cache, **{"output.samples_per_shard": 2})
    first = run_job(spec)
    records = ("_run.json", "_runs", "report.html", "README.md")  # rewritten by every run
    before = {p: p.stat().st_mtime_ns for p in out_dir.iterdir() if p.name not in records}
    again = run_job(spec)  # resume of a finished job: nothing to do
    assert (again.rows, again.skipped, again.shards) == (0, 3, [])
    assert {p: p.stat().st_mtime_ns for p in out_dir.iterdir() if p.name not in records} == before
    # one record per run, the latest also as _run.json
    index = [f"{first.run_id}.keys.parquet", f"{first.run_id}.shards.parquet"]  # only a run that committed shards
    assert sorted(p.name for p in (out_dir / "_runs").iterdir()) == sorted(
        [f"{r.run_id}.json" for r in (first, again)] + index)
    assert json.loads((out_dir / "_run.json").read_text())["run_id"] == again.run_id
    appended = run_job(spec, mode="append")
    assert appended.shards == ["00002", "00003"]
    assert len(read_output(str(out_dir))["rows"]) == 6
    replaced = run_job(spec, mode="overwrite")
    assert replaced.shards == ["00000", "00001"]
    assert len(read_output(str(out_dir))["rows"]) == 3


def test_resume_after_a_dead_run(ray_session, s3, write_prompts, model_cache: str) -> None:
    """A run that died before committing its last shard is finished by the next run, rows exactly once."""
    local = write_prompts(ROWS, "prompts.jsonl")
    s3.put(str(local), "pixelmill/in/prompts.jsonl")
    spec = _spec("s3://pixelmill/in/prompts.jsonl", "s3://pixelmill/out", model_cache)
    run_job(spec)
    complete = {row["id"]: row["sha256"] for row in read_output("s3://pixelmill/out")["rows"]}
    # Simulate the death: shard 1 published its tar and Parquet but never wrote its stats,
    # and a temporary of the dead run is still there.
    lost = {row["id"] for row in read_output("s3://pixelmill/out")["rows"] if row["shard"] == 1}
    s3.rm("pixelmill/out/00001_stats.json")
    s3.pipe("pixelmill/out/_tmp/dead-run/00009.tar", b"partial")
    resumed = run_job(spec)
    assert resumed.rows == len(lost) and resumed.skipped == len(ROWS) - len(lost)
    out = read_output("s3://pixelmill/out")
    ids = [row["id"] for row in out["rows"]]
    assert sorted(ids) == sorted(complete)  # every row exactly once
    assert {row["id"]: row["sha256"] for row in out["rows"]} == complete  # byte-identical images
    assert not any("_tmp" in p or p.endswith("00001.tar") for p in out["all_files"])
    assert len(out["samples"]) == len(GOOD_IDS)
    assert out["run"]["skipped"] == resumed.skipped


def test_cli_run_with_overrides(ray_session, write_prompts, tmp_path: Path, model_cache: str, capsys) -> None:
    path = write_prompts(ROWS, "prompts.jsonl")
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{uri: nowhere.jsonl}}\noutput: {{uri: nowhere}}\nmodel: {{cache_dir: {model_cache}}}\n")
    out_dir = tmp_path / "cli-out"
    code = main(["run", str(job), "--input", str(path), "--output", str(out_dir), "--limit", "2",
                 "--set", "output.image_format=jpg"])
    assert code == 0
    line = capsys.readouterr().out
    assert "2 rows in, 0 skipped as done, 2 images out, 0 errors" in line
    out = read_output(str(out_dir))
    assert {s["image"].format for s in out["samples"]} == {"JPEG"}
    assert [r["id"] for r in out["rows"]] == ["r0", "r1"]


def test_cli_run_missing_input_fails_cleanly(tmp_path: Path, capsys) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{uri: {tmp_path}/absent.jsonl}}\noutput: {{uri: {tmp_path}/o}}\nray: {{num_cpus: 1}}\n")
    assert main(["run", str(job)]) == 2
    assert "nothing found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing was done
