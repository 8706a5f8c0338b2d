"""Prompt sources: three formats, folders, globs, S3, row numbering, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.sources import INPUT_ERROR_COLUMN, input_columns, list_input_files, read_prompts
from pipelines.spec import InputSpec

ROWS = [{"prompt": f"prompt {i}", "topic": f"t{i % 3}"} for i in range(7)]


def _read(uri: str, **spec) -> list[dict]:
    ds = read_prompts(InputSpec(uri=uri, **spec))
    return sorted(ds.take_all(), key=lambda r: (r["source"], r["source_row"]))


@pytest.mark.parametrize("name", ["prompts.jsonl", "prompts.csv", "prompts.parquet"])
def test_each_format_reads_rows_in_order(ray_session, write_prompts, name: str) -> None:
    path = write_prompts(ROWS, name)
    rows = _read(str(path))
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in ROWS]
    assert [r["source_row"] for r in rows] == list(range(7))
    assert {r["source"] for r in rows} == {name}
    assert [r["topic"] for r in rows] == [r["topic"] for r in ROWS]


def test_folder_of_files_and_glob(ray_session, write_prompts, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    write_prompts(ROWS[:3], "a.jsonl", folder)
    write_prompts(ROWS[3:], "sub/b.jsonl", folder)
    (folder / "_SUCCESS").write_text("")
    rows = _read(str(folder))
    assert len(rows) == 7
    assert {r["source"] for r in rows} == {"a.jsonl", "sub/b.jsonl"}
    globbed = _read(f"file://{folder}/sub/*.jsonl")
    assert [r["prompt"] for r in globbed] == [r["prompt"] for r in ROWS[3:]]


def test_mixed_formats_need_an_explicit_format(ray_session, write_prompts, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_prompts(ROWS[:2], "a.jsonl", folder)
    write_prompts(ROWS[2:], "b.csv", folder)
    with pytest.raises(ValueError, match="mixed formats"):
        list_input_files(InputSpec(uri=str(folder)))
    assert [r["prompt"] for r in _read(str(folder), format="csv")] == [r["prompt"] for r in ROWS[2:]]


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing found"):
        list_input_files(InputSpec(uri=str(tmp_path / "absent.jsonl")))


def test_unreadable_file_names_the_file(ray_session, tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(Exception, match="broken.parquet"):
        read_prompts(InputSpec(uri=str(bad))).take_all()


def test_reads_from_s3(ray_session, s3, write_prompts) -> None:
    local = write_prompts(ROWS, "prompts.parquet")
    s3.put(str(local), "pixelmill/in/day=1/prompts.parquet")
    rows = _read("s3://pixelmill/in/")
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in ROWS]
    assert rows[0]["source"] == "day=1/prompts.parquet"


@pytest.mark.parametrize("name", ["prompts.jsonl", "prompts.csv", "prompts.parquet"])
def test_input_columns_come_from_the_first_batch_without_ray(write_prompts, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "cols"
    folder.mkdir()
    if name.endswith(".jsonl"):
        (folder / "0-empty.jsonl").write_text("\n")  # no row: skipped, the next file shows the columns
    write_prompts(ROWS, f"1-{name}", folder)
    listing = list_input_files(InputSpec(uri=str(folder)))
    # the JSONL reader adds its per-line error column; plan.prepared_rows drops it
    assert [c for c in input_columns(listing) if c != INPUT_ERROR_COLUMN] == ["prompt", "topic"]


def test_input_columns_of_only_empty_files_is_none_and_bad_first_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("\n")
    assert input_columns(list_input_files(InputSpec(uri=str(tmp_path / "a.jsonl")))) is None
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="input file b.parquet could not be read"):
        input_columns(list_input_files(InputSpec(uri=str(tmp_path / "b.parquet"))))
