"""A resume never mixes two specs or renumbers rows (issue 16, kinds 2 and 3; ``pipelines.fingerprint``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.runner import PreflightError, run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output


def _spec(input_uri: str, output_uri: str, model_cache: str, *, limit: int | None = None, **extra):
    raw = {"input": {"uri": input_uri}, "output": {"uri": output_uri, "samples_per_shard": 3, "report": False},
           "model": {"cache_dir": model_cache}, "score": None,
           "defaults": {"width": 32, "height": 32, "steps": 1}, **extra}
    if limit is not None:
        raw["limit"] = limit
    return load_spec(raw=raw)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


PROMPTS = ["a red circle", "a blue square", "a green star", "a white cross", "a black ring", "a pink dot"]


def test_a_changed_input_without_ids_stops_a_resume(ray_session, tmp_path: Path, model_cache: str) -> None:
    source, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    source.write_text(_jsonl([{"prompt": p} for p in PROMPTS]))
    first = run_job(_spec(str(source), str(out), model_cache, limit=3))
    assert first.balanced and first.images == 3
    record = json.loads((out / "_run.json").read_text())
    assert record["input"]["positional_ids"] is True and record["input"]["files"][0][:2] == ["prompts.jsonl",
                                                                                              source.stat().st_size]
    before = _files(out)
    source.write_text(_jsonl([{"prompt": "a new prompt at the top"}] + [{"prompt": p} for p in PROMPTS]))
    with pytest.raises(PreflightError) as refused:
        run_job(_spec(str(source), str(out), model_cache))
    message = str(refused.value)
    assert "the input" in message and "prompts.jsonl changed" in message and "input.columns.id" in message
    assert _files(out) == before  # nothing done, nothing written

    # an append is a new batch of the changed file: allowed, and recorded
    appended = run_job(_spec(str(source), str(out), model_cache), mode="append")
    assert appended.balanced and appended.images == 7


def test_a_changed_input_with_ids_resumes(ray_session, tmp_path: Path, model_cache: str) -> None:
    source, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    rows = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    source.write_text(_jsonl(rows))
    assert run_job(_spec(str(source), str(out), model_cache, limit=3)).balanced
    source.write_text(_jsonl([{"id": "new", "prompt": "a new prompt at the top"}] + rows))
    resumed = run_job(_spec(str(source), str(out), model_cache))
    assert resumed.balanced, resumed.equation
    check_exactly_once(read_output(str(out)), ["new"] + [row["id"] for row in rows])


def test_a_changed_spec_stops_a_resume_unless_allowed(ray_session, tmp_path: Path, model_cache: str) -> None:
    from pipelines.cli import main

    source, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    source.write_text(_jsonl([{"id": f"r{i}", "prompt": p} for i, p in enumerate(PROMPTS * 2)]))
    assert run_job(_spec(str(source), str(out), model_cache, limit=5)).balanced
    before = _files(out)
    changed = {"defaults": {"width": 16, "height": 16, "steps": 1}, "model": {"cache_dir": model_cache,
                                                                             "uri": "builtin:shapes-gan"},
               "generate": {"backend": "gan"}}
    with pytest.raises(PreflightError) as refused:
        run_job(_spec(str(source), str(out), model_cache, **changed))
    message = str(refused.value)
    for key in ("defaults.width: 32 -> 16", "defaults.height: 32 -> 16", "model.uri: 'builtin:shapes-sd' -> "
                "'builtin:shapes-gan'", "generate.backend: 'diffusers' -> 'gan'", "model.hash", "--allow-spec-change"):
        assert key in message, (key, message)
    assert _files(out) == before

    # the CLI says it in one line with exit 2
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"input": {"uri": str(source)}, "output": {"uri": str(out), "samples_per_shard": 3,
                                                                        "report": False},
                               "score": None, **changed}))
    assert main(["run", str(job)]) == 2

    # allowed: the output mixes both, and each run's record keeps its own settings
    resumed = run_job(_spec(str(source), str(out), model_cache, **changed), allow_spec_change=True)
    assert resumed.balanced and resumed.images == 7, resumed.equation
    records = sorted((json.loads(p.read_text()) for p in (out / "_runs").glob("*.json")), key=lambda r: r["started"])
    assert [r["settings"]["defaults.width"] for r in records] == [32, 16]
    assert [r["settings"]["generate.backend"] for r in records] == ["diffusers", "gan"]


def test_an_append_with_new_settings_is_a_new_batch(ray_session, tmp_path: Path, model_cache: str) -> None:
    first, second, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "out"
    first.write_text(_jsonl([{"id": "a0", "prompt": "a red circle"}]))
    second.write_text(_jsonl([{"id": "b0", "prompt": "a blue square"}]))
    assert run_job(_spec(str(first), str(out), model_cache)).balanced
    appended = run_job(_spec(str(second), str(out), model_cache, seed=7), mode="append")
    assert appended.balanced and appended.images == 1


def test_a_changed_input_on_s3_stops_a_resume(ray_session, s3, model_cache: str) -> None:
    s3.pipe("pixelmill/changes/in/a.jsonl", _jsonl([{"prompt": p} for p in PROMPTS[:3]]).encode())
    s3.pipe("pixelmill/changes/in/b.jsonl", _jsonl([{"prompt": p} for p in PROMPTS[3:]]).encode())
    spec = _spec("s3://pixelmill/changes/in/", "s3://pixelmill/changes/out", model_cache, limit=2)
    assert run_job(spec).balanced
    record = json.loads(s3.cat("pixelmill/changes/out/_run.json"))
    assert [entry[0] for entry in record["input"]["files"]] == ["a.jsonl", "b.jsonl"]
    assert all(entry[2] for entry in record["input"]["files"])  # the ETag
    s3.pipe("pixelmill/changes/in/b.jsonl", _jsonl([{"prompt": "another"}] + [{"prompt": p} for p in PROMPTS[3:]])
            .encode())
    with pytest.raises(PreflightError, match=r"b\.jsonl changed"):
        run_job(_spec("s3://pixelmill/changes/in/", "s3://pixelmill/changes/out", model_cache))
    # a changed spec on S3 is refused too (the spec is checked first), naming the key
    with pytest.raises(PreflightError, match=r"seed: 0 -> 5"):
        run_job(_spec("s3://pixelmill/changes/in/", "s3://pixelmill/changes/out", model_cache, seed=5))


def test_a_file_of_the_same_name_elsewhere_is_the_same_ids(tmp_path: Path) -> None:
    """Positional ids are ``<name>#<row>``: a same-named file from another folder is checked against
    what an earlier run read under that name; a name no run read is new (no Ray)."""
    from pipelines.fingerprint import ResumeRefused, check_resume
    from pipelines.layout import OutputLayout

    out = tmp_path / "out"
    (out / "_runs").mkdir(parents=True)
    record = {"run_id": "r1", "started": "2026-01-01T00:00:00+00:00", "settings": {"seed": 0},
              "input": {"files": [["p.jsonl", 100, "1.0"]], "sha256": "x", "positional_ids": True},
              "spec": {"input": {"uri": "/data/a/p.jsonl"}}}
    (out / "_runs" / "r1.json").write_text(json.dumps(record))
    layout = OutputLayout(str(out))

    def check(files: list[list]) -> None:
        check_resume(layout, input_uri="/data/b/p.jsonl", settings={"seed": 0},
                     input_record={"files": files, "sha256": "y", "positional_ids": True})

    with pytest.raises(ResumeRefused, match=r"p\.jsonl changed since run r1 read it \(size 100 -> 120\)"):
        check([["p.jsonl", 120, "2.0"]])
    check([["p.jsonl", 100, "1.0"]])  # the same file, moved
    check([["q.jsonl", 50, "3.0"]])  # a name no run read: new ids
