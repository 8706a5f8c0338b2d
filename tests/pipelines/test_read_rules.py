"""The reading rules of ``pipelines.sources`` (issue 15): one value or one file's shape never sinks a job."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.rows import prepare_rows
from pipelines.schema import INPUT_ERROR_COLUMN, LINE_COLUMN
from pipelines.sources import FORMAT_READERS, ReadRules, input_columns, list_input_files, read_prompts
from pipelines.spec import ColumnMap, GenerationDefaults, InputSpec


def _rows(path: Path, rules: ReadRules | None = None) -> list[dict]:
    """Read one file with its format's reader, as a read task does (no Ray)."""
    fmt = next(name for name, (exts, _) in FORMAT_READERS.items() if path.name.endswith(exts))
    opened = pa.OSFile(str(path)) if fmt == "parquet" else pa.input_stream(str(path))
    with opened as f:
        batches = list(FORMAT_READERS[fmt][1](f, rules or ReadRules()))
    return [row for batch in batches for row in batch.to_pylist()]


def _canonical(rows: list[dict], name: str = "t.csv", **columns) -> list[dict]:
    table = pa.Table.from_pylist([{**row, "source": name, "source_row": i} for i, row in enumerate(rows)])
    out = prepare_rows(table, columns=ColumnMap(**columns), defaults=GenerationDefaults(), job_seed=1)
    return out.to_pylist()


# --- kind 1: type inference never decides a file's fate -----------------------------------------------

def test_csv_multiline_quoted_values_over_a_megabyte(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    note = '"' + "line one\nline two, with a comma\n" * 20 + '"'
    lines = ["id,prompt,notes"] + [f"r{i},a red circle {i},{note}" for i in range(1900)]
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 1_200_000
    rows = _rows(path)
    assert len(rows) == 1900 and rows[-1]["id"] == "r1899"
    assert rows[36]["notes"] == note.strip('"')


def test_csv_columns_are_text_and_a_bad_seed_fails_its_row_only(tmp_path: Path) -> None:
    path = tmp_path / "seeds.csv"
    lines = ["prompt,seed,width"] + [f"a red circle {i},{i},64" for i in range(60_000)] + ["last,12x,"]
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 1_200_000
    rows = _rows(path)
    assert len(rows) == 60_001
    assert rows[5] == {"prompt": "a red circle 5", "seed": "5", "width": "64"}
    assert rows[-1]["seed"] == "12x" and rows[-1]["width"] is None  # an empty field is null (missing)
    canonical = _canonical(rows[:3] + rows[-1:])
    assert [r["status"] for r in canonical] == ["ok", "ok", "ok", "error"]
    assert [r["seed"] for r in canonical[:3]] == [0, 1, 2] and "seed must be a number" in canonical[-1]["error"]
    assert canonical[-1]["width"] == GenerationDefaults().width


def test_csv_quoted_empty_field_is_empty_text(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text('prompt,notes\na cat,""\na dog,\n')
    assert [r["notes"] for r in _rows(path)] == ["", None]


def test_jsonl_canonical_fields_are_text(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    rows = [{"id": 7, "prompt": f"p{i}", "width": 64, "seed": 3, "guidance": 7.5} for i in range(3)]
    rows.append({"id": "x", "prompt": "p3", "width": "64", "seed": None, "guidance": "7"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = _rows(path)
    assert [r["width"] for r in read] == ["64"] * 4
    assert [r["id"] for r in read] == ["7", "7", "7", "x"]
    assert [r["guidance"] for r in read] == ["7.5", "7.5", "7.5", "7"]
    assert not any(r[INPUT_ERROR_COLUMN] for r in read)
    canonical = _canonical(read, "w.jsonl")
    assert [r["status"] for r in canonical] == ["ok"] * 4 and [r["width"] for r in canonical] == [64] * 4


def test_jsonl_mapped_columns_are_text_too(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"text": "a cat", "w": 64}\n{"text": "a dog", "w": "64"}\n')
    rules = ReadRules.of(ColumnMap(prompt="text", width="w"))
    read = _rows(path, rules)
    assert [r["w"] for r in read] == ["64", "64"]
    assert [r["width"] for r in _canonical(read, "m.jsonl", prompt="text", width="w")] == [64, 64]


def test_jsonl_mixed_passthrough_fields_become_json_text_for_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "meta.jsonl"
    rows = [{"prompt": f"p{i}", "meta": {"rank": i}, "rank": i, "same": i, "big": 2**70 if i == 1 else 1,
             "tags": ["a", i]} for i in range(3)]
    rows.append({"prompt": "p3", "meta": {"rank": "third"}, "rank": "third", "same": 3, "big": 5, "tags": ["b"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = _rows(path)
    assert not any(r[INPUT_ERROR_COLUMN] for r in read)
    assert [r["meta"] for r in read] == ['{"rank": 0}', '{"rank": 1}', '{"rank": 2}', '{"rank": "third"}']
    assert [r["rank"] for r in read] == ["0", "1", "2", '"third"']
    assert [r["same"] for r in read] == [0, 1, 2, 3]  # one JSON type: Arrow's own
    assert [r["big"] for r in read] == ["1", str(2**70), "1", "5"]
    assert [r["tags"] for r in read] == ['["a", 0]', '["a", 1]', '["a", 2]', '["b"]']


def test_jsonl_prompt_that_is_not_text_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "a cat"}\n{"id": "b", "prompt": 12345}\n')
    read = _rows(path)
    assert read[1]["id"] == "b" and "column 'prompt' holds a number" in read[1][INPUT_ERROR_COLUMN]
    assert read[0][INPUT_ERROR_COLUMN] is None


# --- kind 2: ids are text -------------------------------------------------------------------------------

def test_csv_ids_stay_exactly_as_written(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("id,prompt\n007,a\n7,b\n0042,c\n42,d\n")
    canonical = _canonical(_rows(path))
    assert [r["id"] for r in canonical] == ["007", "7", "0042", "42"]


def test_csv_ids_end_to_end(ray_session, tmp_path: Path) -> None:
    from pipelines.plan import prepared_rows
    from pipelines.spec import load_spec

    path = tmp_path / "ids.csv"
    path.write_text("id,prompt,seed\n007,a,1\n7,b,2\n0042,c,\n42,d,4x\n")
    spec = load_spec(raw={"input": {"uri": str(path)}, "output": {"uri": str(tmp_path / "o")}})
    rows = sorted(prepared_rows(spec).take_all(), key=lambda r: r["source_row"])
    assert [r["id"] for r in rows] == ["007", "7", "0042", "42"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]


# --- kind 4: text encoding ------------------------------------------------------------------------------

def test_jsonl_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"id": "first", "prompt": "a cat"}\n{"id": "second", "prompt": "a dog"}\n')
    read = _rows(path)
    assert [r["id"] for r in read] == ["first", "second"] and not any(r[INPUT_ERROR_COLUMN] for r in read)
    one = tmp_path / "one.jsonl"
    one.write_bytes(b'\xef\xbb\xbf{"id": "only", "prompt": "a cat"}')  # no newline at all
    assert [r["id"] for r in _rows(one)] == ["only"]


def test_csv_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfid,prompt\n1,a cat\n")
    assert _rows(path) == [{"id": "1", "prompt": "a cat"}]


def test_jsonl_lone_surrogate_is_a_row_error_that_keeps_its_id(tmp_path: Path) -> None:
    path = tmp_path / "sur.jsonl"
    path.write_text(
        '{"id": "ok", "prompt": "a cat", "note": "fine"}\n'
        '{"id": "bad", "prompt": "a \\ud800 cat", "note": "kept"}\n'
        '{"uid": "bad2", "prompt": "a dog", "note": "x\\udfff"}\n'
        '{"id": "pair", "prompt": "a \\ud83d\\udc31 cat"}\n'
    )
    read = _rows(path, ReadRules())
    assert read[0][INPUT_ERROR_COLUMN] is None and read[3]["prompt"] == "a 🐱 cat"
    assert read[1]["id"] == "bad" and read[1]["note"] == "kept" and read[1]["prompt"] is None
    assert "'prompt' holds a lone UTF-16 surrogate" in read[1][INPUT_ERROR_COLUMN]
    assert LINE_COLUMN not in read[1]
    mapped = _rows(path, ReadRules.of(ColumnMap(id="uid")))
    assert mapped[2]["uid"] == "bad2" and "'note' holds a lone" in mapped[2][INPUT_ERROR_COLUMN]
    canonical = _canonical(mapped, "sur.jsonl", id="uid")
    assert canonical[2]["id"] == "bad2" and canonical[2]["status"] == "error"


def test_jsonl_lone_surrogate_end_to_end(ray_session, tmp_path: Path) -> None:
    path = tmp_path / "sur.jsonl"
    path.write_text('{"id": "ok", "prompt": "a cat"}\n{"id": "bad", "prompt": "a \\ud800 cat"}\n')
    rows = sorted(read_prompts(InputSpec(uri=str(path))).take_all(), key=lambda r: r["source_row"])
    assert [r["id"] for r in rows] == ["ok", "bad"] and "surrogate" in rows[1][INPUT_ERROR_COLUMN]


# --- kind 5: empty files --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl", "empty.parquet"])
def test_zero_byte_file_is_zero_rows(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    assert _rows(tmp_path / name) == []


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_zero_byte_file_next_to_good_ones(ray_session, write_prompts, tmp_path: Path, suffix: str) -> None:
    folder = tmp_path / "in"
    (folder / f"0-empty.{suffix}").parent.mkdir(parents=True, exist_ok=True)
    (folder / f"0-empty.{suffix}").write_bytes(b"")
    write_prompts([{"prompt": "a cat", "id": "1"}], f"1-good.{suffix}", folder)
    listing = list_input_files(InputSpec(uri=str(folder)))
    assert [c for c in input_columns(listing) or [] if c != INPUT_ERROR_COLUMN] == ["prompt", "id"]
    rows = read_prompts(InputSpec(uri=str(folder)), listing=listing).take_all()
    assert [r["prompt"] for r in rows] == ["a cat"]


# --- kind 11: a URI naming an existing file means that file ------------------------------------------

def _glob_named_files(write) -> None:
    for name in ("[1].jsonl", "1.jsonl", "q1.jsonl", "q?.jsonl", "qX.jsonl"):
        write(name, json.dumps({"id": name, "prompt": "a cat"}) + "\n")


def test_uri_naming_an_existing_local_file_reads_exactly_it(tmp_path: Path) -> None:
    def write(name: str, text: str) -> None:
        (tmp_path / name).write_text(text)

    _glob_named_files(write)
    for name in ("[1].jsonl", "q?.jsonl"):
        _, files, _, _ = list_input_files(InputSpec(uri=str(tmp_path / name)))
        assert files == [str(tmp_path / name)]
    _, files, _, _ = list_input_files(InputSpec(uri=str(tmp_path / "q[X1].jsonl")))  # no such file: a pattern
    assert [Path(f).name for f in files] == ["q1.jsonl", "qX.jsonl"]


def test_uri_naming_an_existing_s3_object_reads_exactly_it(ray_session, s3) -> None:
    def write(name: str, text: str) -> None:
        s3.pipe(f"pixelmill/sp/{name}", text.encode())

    _glob_named_files(write)
    for name in ("[1].jsonl", "q?.jsonl"):
        rows = read_prompts(InputSpec(uri=f"s3://pixelmill/sp/{name}")).take_all()
        assert [r["id"] for r in rows] == [name]
    _, files, _, _ = list_input_files(InputSpec(uri="s3://pixelmill/sp/q*.jsonl"))
    assert [f.rsplit("/", 1)[1] for f in files] == ["q1.jsonl", "q?.jsonl", "qX.jsonl"]


def test_an_input_of_only_empty_files_is_zero_rows(ray_session, tmp_path: Path, model_cache: str) -> None:
    """A 0-byte file is zero rows (rule 6), also when it is the whole input: balanced, nothing written."""
    from pipelines.runner import run_job
    from pipelines.spec import load_spec

    for name in ("empty.jsonl", "empty.csv"):
        source = tmp_path / name
        source.write_bytes(b"")
        raw = {"input": {"uri": str(source)}, "output": {"uri": str(tmp_path / f"out-{name}")},
               "model": {"cache_dir": model_cache}, "score": None}
        summary = run_job(load_spec(raw=raw))
        assert summary.balanced and (summary.input_rows, summary.images, summary.errors) == (0, 0, 0), name
        assert not list((tmp_path / f"out-{name}").glob("*.tar"))
