"""Bad rows never sink a run: poisoned inputs, the errors table, retry-errors, bad input files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.retry import retry_errors
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.conftest import POISON_MARKER
from tests.pipelines.readback import check_exactly_once, read_output


def _spec(input_uri: str, output_uri: str, model_cache: str, **extra):
    raw = {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "samples_per_shard": 16},
        "model": {"cache_dir": model_cache},
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "stages": {"encode": {"batch_size": 16}, "generate": {"batch_size": 8}},
        **extra,
    }
    return load_spec(raw=raw)


def _poisoned_input(path: Path) -> tuple[list[str], dict[str, str]]:
    """Write 100 JSONL lines, 5 of them poisoned; return all ids and the expected error per bad id."""
    lines: list[bytes] = []
    for i in range(100):
        lines.append(json.dumps({"id": f"ok{i:03d}", "prompt": f"a shape number {i}"}).encode())
    # Hard but valid text: these must become images.
    lines[10] = json.dumps({"id": "long", "prompt": "a red circle " * 4000}).encode()  # ~52 KB
    lines[20] = json.dumps({"id": "emoji", "prompt": "a 🐱 cat\x07 with \u202e control \x00 chars",
                            "negative_prompt": "blurry " * 200}).encode()
    # Poison: 5 of 100 rows.
    lines[30] = json.dumps({"id": "empty", "prompt": "   "}).encode()
    lines[40] = json.dumps({"id": "null", "prompt": None}).encode()
    lines[50] = json.dumps({"id": "number", "prompt": 12345}).encode()
    lines[60] = b'{"id": "latin1", "prompt": "caf\xe9 au lait"}'  # not UTF-8
    lines[70] = json.dumps({"id": "raises", "prompt": f"a square {POISON_MARKER}"}).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")
    ids = [f"ok{i:03d}" for i in range(100)]
    for number, name in ((10, "long"), (20, "emoji"), (30, "empty"), (40, "null"), (50, "number"), (70, "raises")):
        ids[number] = name
    ids[60] = "prompts.jsonl#60"  # an unreadable line has no id of its own: its place in the file names it
    expected = {
        "empty": "prompt is empty",
        "null": "prompt must be text",
        "number": "column 'prompt' holds a number",
        "prompts.jsonl#60": "line 61 is not valid UTF-8",
        "raises": "InjectedFault",
    }
    return ids, expected


def test_poisoned_input_keeps_every_good_row(ray_session, tmp_path: Path, model_cache: str) -> None:
    source = tmp_path / "in" / "prompts.jsonl"
    source.parent.mkdir()
    ids, expected = _poisoned_input(source)
    summary = run_job(_spec(str(source), str(tmp_path / "out"), model_cache))

    assert (summary.input_rows, summary.images, summary.errors, summary.skipped) == (100, 95, 5, 0)
    assert summary.balanced, summary.equation
    out = read_output(str(tmp_path / "out"))
    check_exactly_once(out, ids)
    assert out["run"]["balanced"] and out["run"]["equation"] == summary.equation
    errors = {row["id"]: row for row in out["errors"]}
    assert set(errors) == set(expected)
    for row_id, reason in expected.items():
        assert reason in errors[row_id]["error"], (row_id, errors[row_id]["error"])
    assert errors["raises"]["stage"] == "generate" and errors["empty"]["stage"] == "input"
    # The errors table is the same records the shards' Parquet holds, readable as one dataset.
    table = pads.dataset(str(tmp_path / "out" / "_errors"), format="parquet").to_table()
    assert sorted(table.column("id").to_pylist()) == sorted(expected)
    images = {s["json"]["id"]: s for s in out["samples"]}
    assert {"long", "emoji"} <= set(images)
    assert images["emoji"]["txt"] == "a 🐱 cat\x07 with \u202e control \x00 chars"
    assert images["long"]["json"]["prompt_truncated"] and images["long"]["json"]["prompt_tokens"] > 77
    assert not images["emoji"]["json"]["prompt_truncated"]
    # a negative prompt past the window is flagged too
    assert images["emoji"]["json"]["negative_prompt_truncated"]
    assert not images["long"]["json"]["negative_prompt_truncated"]
    assert summary.errors_by_stage == {"input": 4, "generate": 1}


def test_retry_errors_turns_fixed_rows_into_images(
    ray_session, s3, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    late = "s3://pixelmill/styles/late.png"
    rows = [{"id": f"r{i}", "prompt": f"a blue square {i}", "style": late} for i in range(3)]
    rows += [{"id": "plain", "prompt": "a red circle", "style": ""}, {"id": "empty", "prompt": ""}]
    s3.put(str(write_prompts(rows, "prompts.jsonl")), "pixelmill/in/prompts.jsonl")
    spec = _spec(
        "s3://pixelmill/in/prompts.jsonl", "s3://pixelmill/out", model_cache,
        style={"column": "style"}, stages={"encode": {"batch_size": 8}, "generate": {"batch_size": 8},
                                           "style": {"batch_size": 8}},
    )
    first = run_job(spec)
    assert (first.images, first.errors) == (1, 4) and first.errors_by_stage == {"style": 3, "input": 1}

    # The cause goes away: the style image is uploaded.  Only the error rows run again.
    style = tmp_path / "late.png"
    Image.fromarray(np.full((40, 40, 3), (30, 200, 90), np.uint8)).save(style)
    s3.put(str(style), "pixelmill/styles/late.png")
    assert main(["retry-errors", "s3://pixelmill/out", "--min-success-rate", "0"]) == 0
    out = read_output("s3://pixelmill/out")
    check_exactly_once(out, [row["id"] for row in rows])
    assert {s["json"]["id"] for s in out["samples"]} == {"r0", "r1", "r2", "plain"}
    assert [row["id"] for row in out["errors"]] == ["empty"]
    retry = out["run"]
    assert retry["mode"] == "retry-errors" and retry["balanced"]
    assert (retry["input_rows"], retry["images"], retry["errors"]) == (4, 3, 1)
    assert not s3.exists("pixelmill/out/_retry.json")
    # Nothing left to fix: a second retry runs only the row whose cause remains.
    assert retry_errors(spec).images == 0


def test_bad_input_files_are_named(ray_session, tmp_path: Path, write_prompts, model_cache: str, capsys) -> None:
    corrupt = tmp_path / "corrupt" / "prompts.parquet"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PAR1 this is not a parquet file PAR1")
    no_prompt = write_prompts([{"text": "a cat"}], "prompts.csv", folder=tmp_path / "csv")
    (tmp_path / "empty").mkdir()
    cases = [
        (corrupt, "prompts.parquet could not be read as a prompt table"),
        (no_prompt, "column 'prompt' not in the input"),
        (tmp_path / "empty", "no .parquet, .pq, .jsonl, .json, .ndjson, .csv files"),
    ]
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{uri: x}}\noutput: {{uri: {tmp_path}/o}}\nmodel: {{cache_dir: {model_cache}}}\n")
    for path, message in cases:
        assert main(["run", str(job), "--input", str(path)]) == 2, path
        last = capsys.readouterr().err.strip().splitlines()[-1]
        # Ray Data logs its own traceback above; pixelmill's last word is one clear line.
        assert last.startswith("pixelmill: ") and message in last, last


@pytest.mark.parametrize("mode", ["resume", "append"])
def test_stats_record_filtered_and_errors_separately(mode: str) -> None:
    from pipelines.runner import RunSummary

    summary = RunSummary(run_id="x", output="o", mode=mode, input_rows=10, images=6, errors=2, filtered=1, skipped=1)
    summary.balance()
    assert summary.balanced and summary.equation.endswith("== 10 input rows")
    summary.images = 5
    summary.balance()
    assert not summary.balanced and "!=" in summary.equation
    assert summary.success_rate == pytest.approx(5 / 7)


def test_safety_checker_hits_are_filtered_not_images(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    from models.store import resolve_model_path
    from tests.models.test_image_checks import _with_safety_checker

    model = _with_safety_checker(
        resolve_model_path("builtin:tiny-sd", cache_dir=model_cache), tmp_path / "checked-model", threshold=-2.0
    )
    rows = [{"id": f"f{i}", "prompt": f"a shape {i}"} for i in range(3)] + [{"id": "bad", "prompt": ""}]
    spec = _spec(str(write_prompts(rows, "prompts.jsonl")), str(tmp_path / "out"), model_cache, model={
        "uri": model, "cache_dir": model_cache})
    summary = run_job(spec)
    assert (summary.images, summary.errors, summary.filtered) == (0, 1, 3) and summary.balanced
    out = read_output(str(tmp_path / "out"))
    check_exactly_once(out, [row["id"] for row in rows])
    assert out["samples"] == []  # filtered images never reach the tar
    filtered = [row for row in out["rows"] if row["status"] == "filtered"]
    assert {row["error"] for row in filtered} == {"safety checker flagged the image"}
    assert sum(stats["filtered"] for stats in out["stats"].values()) == 3
    assert summary.success_rate == 0.0  # the one attempted row failed; filtered rows are not attempts
