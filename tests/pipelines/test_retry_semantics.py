"""retry-errors never invents values, never silently does nothing, never hides the latest status (issue 16).

End to end on real Ray, on local files and on moto S3: a first run, then the retry, each
row's fate, the balance of every run, and every documented read (the README's Parquet
snippet, the tars, the dataset card, the report, ``_run.json``) showing each id once.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from PIL import Image

from pipelines import schema
from pipelines.cli import main
from pipelines.layout import OutputLayout
from pipelines.report_data import gather
from pipelines.resume import prepare_output
from pipelines.rows import prepare_rows
from pipelines.runner import run_job
from pipelines.spec import ColumnMap, GenerationDefaults, load_spec
from tests.conftest import POISON_MARKER
from tests.pipelines.readback import check_exactly_once, read_output

# Rows that stay invalid whatever is fixed: id -> the reason they fail with, in every run.
STILL_INVALID = {
    "w63": "width must be a multiple of 8, got 63",
    "h100": "height must be a multiple of 8, got 100",
    "w0": "width must be positive, got 0",
    "wneg": "width must be positive, got -8",
    "empty": "prompt is empty",
    "number": "line 10: column 'prompt' holds a number, not text",
    "prompts.jsonl#10": "line 11 is not valid JSON",
    "raises": "InjectedFault",
}


def _spec(input_uri: str, output_uri: str, model_cache: str, **extra: Any):
    raw = {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "samples_per_shard": 4},
        "model": {"cache_dir": model_cache},
        "score": None,
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "style": {"column": "style"},
        **extra,
    }
    return load_spec(raw=raw)


def _jsonl(late_style: str) -> bytes:
    """Twelve lines: 2 fine, 2 waiting for a style image, 8 that no retry can fix."""
    rows: list[Any] = [
        {"id": "ok0", "prompt": "a red circle"},
        {"id": "ok1", "prompt": "a blue square", "width": "32"},
        {"id": "late0", "prompt": "a green star", "style": late_style},
        {"id": "late1", "prompt": "a white cross", "style": late_style, "width": 32},
        {"id": "w63", "prompt": "a red circle", "width": 63},
        {"id": "h100", "prompt": "a red circle", "height": "100"},
        {"id": "w0", "prompt": "a red circle", "width": 0},
        {"id": "wneg", "prompt": "a red circle", "width": -8},
        {"id": "empty", "prompt": "   "},
        {"id": "number", "prompt": 12345},
        '{"id": "broken", "prompt": ',  # line 11: not JSON, so no id of its own
        {"id": "raises", "prompt": f"a square {POISON_MARKER}"},
    ]
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


IDS = ["ok0", "ok1", "late0", "late1", *STILL_INVALID]


def _save_style(path: Path) -> None:
    Image.fromarray(np.full((40, 40, 3), (30, 200, 90), np.uint8)).save(path)


def _check_first_run(uri: str) -> dict[str, Any]:
    """The first run: 2 images, 10 error records, each with its true reason and its raw inputs."""
    out = read_output(uri)
    first = out["run"]
    assert first["balanced"] and (first["input_rows"], first["images"], first["errors"]) == (12, 2, 10)
    check_exactly_once(out, IDS)
    rows = {row["id"]: row for row in out["rows"]}
    for row_id, reason in STILL_INVALID.items():
        assert rows[row_id]["status"] == "error" and reason in rows[row_id]["error"], (row_id, rows[row_id])
    assert rows["late0"]["stage"] == rows["late1"]["stage"] == "style"
    # The record keeps the row as it was read: the rejected values, not the defaults.
    assert json.loads(rows["w63"][schema.RAW_INPUT])["width"] == "63"  # the reader hands canonical fields over as text
    assert json.loads(rows["h100"][schema.RAW_INPUT])["height"] == "100"
    assert json.loads(rows["wneg"][schema.RAW_INPUT])["width"] == "-8"
    assert rows["ok0"][schema.RAW_INPUT] == "" and rows["late0"][schema.RAW_INPUT] == ""
    return first


def _check_after_retry(uri: str, first: dict[str, Any]) -> None:
    """After the retry: each id once, with its latest status, in every documented read."""
    out = read_output(uri)
    check_exactly_once(out, IDS)
    retry = out["run"]
    assert retry["mode"] == "retry-errors" and retry["balanced"], retry["equation"]
    assert (retry["input_rows"], retry["images"], retry["errors"], retry["skipped"]) == (10, 2, 8, 0)
    assert retry["dataset"] == {"shards": 4, "rows": 12, "images": 4, "errors": 8, "filtered": 0}
    # Shards 1 and 2 held only error records: moved out, nothing is left of them (no empty shard).
    assert sorted(out["stats"]) == ["00000_stats.json", "00003_stats.json", "00004_stats.json", "00005_stats.json"]
    assert out["stats"]["00000_stats.json"]["superseded"] == 2
    # The first run's record is kept, untouched.
    layout = OutputLayout(uri)
    assert layout.read_json(layout.run_record(first["run_id"])) == first
    # The README's Parquet read: each id once, with its latest status and a true reason.
    rows = out["rows"]
    assert sorted(row["id"] for row in rows) == sorted(IDS)
    latest = {row["id"]: row for row in rows}
    assert {i for i, row in latest.items() if row["status"] == "ok"} == {"ok0", "ok1", "late0", "late1"}
    for row_id, reason in STILL_INVALID.items():
        assert latest[row_id]["status"] == "error" and reason in latest[row_id]["error"], (row_id, latest[row_id])
    assert json.loads(latest["w63"][schema.RAW_INPUT])["width"] == "63"
    # No invented image: only the fixed rows became samples, at the size they asked for.
    samples = {s["json"]["id"]: s for s in out["samples"]}
    assert set(samples) == {"ok0", "ok1", "late0", "late1"}
    assert samples["late1"]["image"].size == (32, 32) and samples["late0"]["json"]["style"].endswith("late.png")
    # No empty shard; every shard's stats count what its Parquet holds; the errors table is current.
    by_shard = {}
    for row in rows:
        by_shard[row["shard"]] = by_shard.get(row["shard"], 0) + 1
    assert {int(name.split("_")[0]): s["count"] for name, s in out["stats"].items()} == by_shard
    assert all(s["count"] > 0 for s in out["stats"].values())
    assert sorted(row["id"] for row in out["errors"]) == sorted(STILL_INVALID)
    # The report and the dataset card count the same.
    report = gather(layout, sample_size=4, seed=0)
    assert (report.totals["images"], report.totals["errors"], report.error_total) == (4, 8, 8)
    assert "\n4 images as WebDataset shards" in layout.fs.cat_file(layout.path("README.md")).decode()


def test_retry_from_shard_parquets_after_errors_deleted_by_hand(
    ray_session, tmp_path: Path, model_cache: str
) -> None:
    source = tmp_path / "in" / "prompts.jsonl"
    source.parent.mkdir()
    late = tmp_path / "styles" / "late.png"
    source.write_bytes(_jsonl(str(late)))
    out_uri = str(tmp_path / "out")
    summary = run_job(_spec(str(source), out_uri, model_cache))
    assert summary.balanced and summary.errors_by_stage == {"input": 7, "style": 2, "generate": 1}
    first = _check_first_run(out_uri)

    # The cause goes away, and someone deletes the errors table by hand: the shards still hold the records.
    late.parent.mkdir()
    _save_style(late)
    for path in (tmp_path / "out" / "_errors").iterdir():
        path.unlink()
    (tmp_path / "out" / "_errors").rmdir()
    assert main(["retry-errors", out_uri, "--min-success-rate", "0"]) == 0
    _check_after_retry(out_uri, first)
    # The README's snippet itself, as written.
    table = pads.dataset(out_uri, format="parquet", exclude_invalid_files=True).to_table()
    assert sorted(table.column("id").to_pylist()) == sorted(IDS)

    # A resume run afterwards finds every id done once: it balances with 12 skipped.
    again = run_job(_spec(str(source), out_uri, model_cache))
    assert again.balanced and (again.input_rows, again.skipped, again.images) == (12, 12, 0), again.equation


def test_retry_on_s3(ray_session, s3, tmp_path: Path, model_cache: str) -> None:
    s3.pipe("pixelmill/in/prompts.jsonl", _jsonl("s3://pixelmill/styles/late.png"))
    out_uri = "s3://pixelmill/out"
    first_summary = run_job(_spec("s3://pixelmill/in/prompts.jsonl", out_uri, model_cache))
    assert first_summary.balanced
    first = _check_first_run(out_uri)
    style = tmp_path / "late.png"
    _save_style(style)
    s3.put(str(style), "pixelmill/styles/late.png")
    assert main(["retry-errors", out_uri, "--min-success-rate", "0"]) == 0
    _check_after_retry(out_uri, first)
    assert not s3.exists("pixelmill/out/_retry.json")
    # Nothing fixed this time: the 8 rows fail again, each with its own reason, still once each.
    assert main(["retry-errors", out_uri, "--min-success-rate", "0"]) == 0
    out = read_output(out_uri)
    check_exactly_once(out, IDS)
    assert out["run"]["balanced"] and (out["run"]["input_rows"], out["run"]["errors"]) == (8, 8)
    latest = {row["id"]: row for row in out["rows"]}
    assert len(out["rows"]) == 12
    for row_id, reason in STILL_INVALID.items():
        assert reason in latest[row_id]["error"], (row_id, latest[row_id])


def test_nothing_to_retry_exits_2_and_keeps_the_run_record(
    ray_session, tmp_path: Path, write_prompts, model_cache: str, capsys
) -> None:
    source = write_prompts([{"id": "a", "prompt": "a red circle"}, {"id": "b", "prompt": "a blue square"}])
    out = tmp_path / "out"
    assert run_job(_spec(str(source), str(out), model_cache, style=None)).images == 2
    record = (out / "_run.json").read_bytes()
    runs = sorted(p.name for p in (out / "_runs").iterdir())
    assert main(["retry-errors", str(out)]) == 2
    message = capsys.readouterr().err
    assert "nothing to retry" in message and "none of the 1 committed shards" in message, message
    assert (out / "_run.json").read_bytes() == record
    assert sorted(p.name for p in (out / "_runs").iterdir()) == runs
    assert not (out / "_retry.json").exists()
    # An output with no shard at all says so.
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "_run.json").write_bytes(record)
    assert main(["retry-errors", str(tmp_path / "bare")]) == 2
    assert "holds no committed shard" in capsys.readouterr().err


def test_unfinished_retry_stops_resume_and_append(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path))
    layout.write_json(layout.retry_manifest, {"run_id": "r", "first_shard": 0, "sources": {}})
    for mode in ("resume", "append"):
        with pytest.raises(RuntimeError, match="retry-errors run .* did not finish"):
            prepare_output(layout, mode)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "column, value",
    [("width", "63"), ("width", 100), ("width", 0), ("width", -8), ("width", 64.5), ("width", "0x40"),
     ("width", True), ("seed", -1), ("seed", "18446744073709551616"), ("seed", Decimal("1.5")), ("seed", "12x"),
     ("seed", float("nan")), ("guidance", float("-inf")), ("guidance", "nan"), ("prompt", None),
     ("id", b"caf\xe9"), ("width", [8, 8])],
)
def test_a_rejected_row_is_rejected_again_with_the_same_reason(column: str, value: Any) -> None:
    """An input-stage record read back (output columns dropped, as retry-errors does) fails the same way."""
    row = {"prompt": "a red circle", column: value, "source": "f", "source_row": 3}
    kind = pa.list_(pa.int64()) if isinstance(value, list) else None
    table = pa.table({name: pa.array([v], kind if name == column else None) for name, v in row.items()})
    first = prepare_rows(table, columns=ColumnMap(), defaults=GenerationDefaults(), job_seed=0)
    assert first.column("status").to_pylist() == ["error"]
    record = first.drop_columns([c for c in first.column_names if c in schema.OUTPUT_COLUMNS])
    again = prepare_rows(record, columns=ColumnMap(), defaults=GenerationDefaults(), job_seed=0)
    assert again.column("error").to_pylist() == first.column("error").to_pylist()
    assert again.column(schema.RAW_INPUT).to_pylist() == first.column(schema.RAW_INPUT).to_pylist()
    assert again.column("id").to_pylist() == first.column("id").to_pylist()
