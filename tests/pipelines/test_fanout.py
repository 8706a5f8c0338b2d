"""Several images per prompt without Ray: ``rows.prepare_rows`` + ``fanout.fan_out`` on pyarrow tables.

Every input row ends exactly once: as N samples ``<id>/<k>`` (N its own valid count, else the
job's) or as one input-stage error record with its own id; seeds derive from the row's seed
(image 0 keeps it); pass-through columns are the row's own.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.fanout import child_id, fan_out, fans_out
from pipelines.rows import MAX_IMAGES_PER_PROMPT, child_seed, derive_seed, prepare_rows
from pipelines.schema import IMAGES_PER_PROMPT_COLUMN
from pipelines.spec import ColumnMap, GenerationDefaults, load_spec

DEFAULTS = GenerationDefaults()
JOB_SEED = 9


def _samples(table: pa.Table, *, columns: ColumnMap, job_n: int, enabled: bool = True) -> pa.Table:
    rows = prepare_rows(table, columns=columns, defaults=DEFAULTS, job_seed=JOB_SEED, images_per_prompt=job_n)
    return fan_out(rows, enabled=enabled)


def _table(counts: list[Any], count_type: pa.DataType | None = None) -> pa.Table:
    size = len(counts)
    return pa.table({
        "id": [f"r{i}" for i in range(size)],
        "prompt": [f"prompt {i}" for i in range(size)],
        "n": pa.array(counts, type=count_type),
        "campaign": [f"c{i}" for i in range(size)],
        "source": ["in.jsonl"] * size,
        "source_row": list(range(size)),
    })


def test_job_count_gives_child_ids_seeds_and_parent_columns() -> None:
    out = _samples(_table([None, None]).drop_columns(["n"]), columns=ColumnMap(), job_n=3)
    rows = out.to_pylist()
    assert [r["id"] for r in rows] == ["r0/0", "r0/1", "r0/2", "r1/0", "r1/1", "r1/2"]
    assert [r["parent_id"] for r in rows] == ["r0"] * 3 + ["r1"] * 3
    assert [r["image_index"] for r in rows] == [0, 1, 2] * 2
    assert [r["campaign"] for r in rows] == ["c0"] * 3 + ["c1"] * 3
    row_seed = derive_seed(JOB_SEED, "r0")
    assert [r["seed"] for r in rows[:3]] == [row_seed, child_seed(row_seed, 1), child_seed(row_seed, 2)]
    assert len({r["seed"] for r in rows}) == 6
    assert IMAGES_PER_PROMPT_COLUMN not in out.column_names


def test_without_fan_out_ids_stay_and_every_row_is_its_own_parent() -> None:
    out = _samples(_table([None, None]).drop_columns(["n"]), columns=ColumnMap(), job_n=1, enabled=False)
    rows = out.to_pylist()
    assert [(r["id"], r["parent_id"], r["image_index"]) for r in rows] == [("r0", "r0", 0), ("r1", "r1", 0)]
    assert rows[0]["seed"] == derive_seed(JOB_SEED, "r0")
    assert IMAGES_PER_PROMPT_COLUMN not in out.column_names


def test_bad_row_counts_are_one_error_record_each() -> None:
    counts = ["2", "0", "-1", "1.5", "x", str(MAX_IMAGES_PER_PROMPT + 1), "1", None]
    rows = _samples(_table(counts), columns=ColumnMap(images_per_prompt="n"), job_n=2).to_pylist()
    by_parent: dict[str, list[dict]] = {}
    for row in rows:
        by_parent.setdefault(row["parent_id"], []).append(row)
    assert [r["id"] for r in by_parent["r0"]] == ["r0/0", "r0/1"]
    assert [r["id"] for r in by_parent["r6"]] == ["r6/0"]  # a count of 1 still gets /0: the job fans out
    assert [r["id"] for r in by_parent["r7"]] == ["r7/0", "r7/1"]  # missing: the job's count
    for parent, reason in [("r1", "got 0"), ("r2", "got -1"), ("r3", "whole number"), ("r4", "must be a number"),
                           ("r5", f"got {MAX_IMAGES_PER_PROMPT + 1}")]:
        (record,) = by_parent[parent]
        assert record["id"] == parent and record["status"] == "error" and record["stage"] == "input"
        assert reason in record["error"] and '"images_per_prompt"' in record["raw_input"]


def test_a_retried_record_keeps_its_sample_identity() -> None:
    """A record read back by retry-errors carries parent_id and image_index; it is never fanned out again."""
    record = pa.table({"id": ["r0/2"], "prompt": ["p"], "seed": [1234], "parent_id": ["r0"], "image_index": [2],
                       "source": ["in.jsonl"], "source_row": [0]})
    rows = _samples(record, columns=ColumnMap(), job_n=3, enabled=False).to_pylist()
    assert [(r["id"], r["parent_id"], r["image_index"], r["seed"]) for r in rows] == [("r0/2", "r0", 2, 1234)]


def test_fans_out_when_the_count_or_a_column_says_so() -> None:
    raw = {"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}}
    assert not fans_out(load_spec(raw=raw), ["id", "prompt"])
    assert fans_out(load_spec(raw={**raw, "images_per_prompt": 2}))
    assert fans_out(load_spec(raw={**raw, "input": {"uri": "in.jsonl", "columns": {"images_per_prompt": "n"}}}))
    assert fans_out(load_spec(raw=raw), ["prompt", "images_per_prompt"])  # read unmapped, as seed is
    assert child_id("a/b", 3) == "a/b/3"  # fan-outs compose by appending /<index>


def test_the_resume_fingerprint_knows_a_job_that_fans_out_through_an_unmapped_column() -> None:
    from pipelines.fingerprint import settings_of

    spec = load_spec(raw={"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}, "score": None})
    assert "images_per_prompt.child_ids" not in settings_of(spec, ["prompt"])
    assert settings_of(spec, ["prompt", "images_per_prompt"])["images_per_prompt.child_ids"] is True


def test_the_readme_example_is_a_valid_fanning_job() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Several images per prompt", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"^```yaml\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    spec = load_spec(raw=yaml.safe_load(example))
    assert spec.images_per_prompt == 3 and spec.input.columns.images_per_prompt == "n" and fans_out(spec)


@pytest.mark.parametrize("k", [1, 2, 7])
def test_child_seed_differs_from_the_row_seed_and_is_stable(k: int) -> None:
    assert child_seed(42, 0) == 42
    assert child_seed(42, k) == child_seed(42, k) != 42
    assert 0 <= child_seed(2**63 - 1, k) < 2**32


# --- property: random count columns, every row ends exactly once -----------------------------------
_counts = st.one_of(
    st.integers(min_value=-3, max_value=6), st.sampled_from([MAX_IMAGES_PER_PROMPT, MAX_IMAGES_PER_PROMPT + 1, 2**70]),
    st.floats(allow_nan=True, allow_infinity=True, min_value=None), st.none(),
    st.sampled_from(["3", " 2 ", "2.0", "2.5", "", "x", "0", "-1", "nan", "1e1"]),
)


def _meaning(value: Any, job_n: int) -> int | None:
    """The count a cell asks for, or None when it makes the row an error record."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return job_n
    try:
        number = Fraction(value.strip()) if isinstance(value, str) else Fraction(value)
    except (ValueError, OverflowError, ZeroDivisionError):
        return None
    if number.denominator != 1 or not 1 <= number <= MAX_IMAGES_PER_PROMPT:
        return None
    return int(number)


@settings(max_examples=150, deadline=None)
@given(st.lists(_counts, max_size=8), st.integers(min_value=1, max_value=4), st.sampled_from(["int", "float", "text"]))
def test_every_row_ends_exactly_once(cells: list[Any], job_n: int, kind: str) -> None:
    if kind == "int":
        cells = [c if c is None or (isinstance(c, int) and abs(c) < 2**63) else None for c in cells]
        column = pa.array(cells, pa.int64())
    elif kind == "float":
        cells = [float(c) if isinstance(c, (int, float)) and abs(c) < 2**70 else None for c in cells]
        column = pa.array(cells, pa.float64())
    else:
        cells = [None if c is None else str(c) for c in cells]
        column = pa.array(cells, pa.string())
    table = _table([None] * len(cells)).set_column(2, "n", column)
    rows = _samples(table, columns=ColumnMap(images_per_prompt="n"), job_n=job_n).to_pylist()

    ended: dict[str, list[dict]] = {}
    for row in rows:
        ended.setdefault(row["parent_id"], []).append(row)
    assert sorted(ended) == sorted(f"r{i}" for i in range(len(cells)))
    assert len({r["id"] for r in rows}) == len(rows)  # no sample id twice
    for i, cell in enumerate(cells):
        parent, want = f"r{i}", _meaning(cell, job_n)
        got = ended[parent]
        if want is None:
            assert [(r["id"], r["status"], r["stage"]) for r in got] == [(parent, "error", "input")], (cell, got)
        else:
            assert [r["id"] for r in got] == [f"{parent}/{k}" for k in range(want)], (cell, got)
            assert all(r["status"] == "ok" and r["campaign"] == f"c{i}" for r in got)
            assert [r["seed"] for r in got] == [child_seed(derive_seed(JOB_SEED, parent), k) for k in range(want)]
