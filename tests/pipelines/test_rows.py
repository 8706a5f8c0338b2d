"""Row preparation: column mapping, stable ids and seeds, per-row overrides, bad values as error rows."""

from __future__ import annotations

import decimal

import pyarrow as pa
import pytest

from pipelines.rows import check_passthrough_columns, derive_seed, prepare_rows
from pipelines.spec import ColumnMap, GenerationDefaults


def _column(value: object) -> pa.Array:
    """A one-cell Arrow column; integers beyond int64 as Parquet holds them (uint64, decimal128)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**63:
        if value < 2**64:
            return pa.array([value], pa.uint64())
        return pa.array([decimal.Decimal(value)], pa.decimal128(38, 0))
    return pa.array([value])


def _prepare(rows: list[dict], columns: ColumnMap | None = None, seed: int = 0) -> list[dict]:
    """Prepare each row as its own one-row table (an Arrow column has one type; these rows may differ)."""
    out: list[dict] = []
    for number, row in enumerate(rows):
        cells = {**row, "source": "day/prompts.csv", "source_row": number}
        table = pa.table({name: _column(value) for name, value in cells.items()})
        prepared = prepare_rows(table, columns=columns or ColumnMap(), defaults=GenerationDefaults(), job_seed=seed)
        out += prepared.to_pylist()
    return out


def test_column_mapping_and_pass_through() -> None:
    columns = ColumnMap(prompt="text", id="uid", negative_prompt="avoid", steps="n_steps")
    rows = _prepare([{"text": "a cat", "uid": 17, "avoid": "dogs", "n_steps": 3, "brand": "acme"}], columns)
    row = rows[0]
    assert (row["prompt"], row["id"], row["negative_prompt"], row["steps"]) == ("a cat", "17", "dogs", 3)
    assert row["brand"] == "acme"
    assert "text" not in row and "uid" not in row and "n_steps" not in row


def test_ids_and_seeds_are_stable_and_derived() -> None:
    first = _prepare([{"prompt": "a"}, {"prompt": "b"}], seed=5)
    again = _prepare([{"prompt": "a"}, {"prompt": "b"}], seed=5)
    other_job = _prepare([{"prompt": "a"}, {"prompt": "b"}], seed=6)
    assert [r["id"] for r in first] == ["day/prompts.csv#0", "day/prompts.csv#1"]
    assert [r["seed"] for r in first] == [r["seed"] for r in again]
    assert first[0]["seed"] == derive_seed(5, "day/prompts.csv#0")
    assert first[0]["seed"] != first[1]["seed"]
    assert [r["seed"] for r in first] != [r["seed"] for r in other_job]


def test_canonical_columns_are_read_without_mapping() -> None:
    row = _prepare([{"prompt": "a", "seed": 9, "width": 32, "guidance": 2.5}])[0]
    assert (row["seed"], row["width"], row["height"], row["guidance"]) == (9, 32, 64, 2.5)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": None}, "prompt must be text, got nothing"),
        ({"prompt": 12}, "prompt must be text, got int"),
        ({"prompt": "a", "width": 30}, "width must be a multiple of 8"),
        ({"prompt": "a", "steps": 0}, "steps must be positive"),
        ({"prompt": "a", "steps": 1.5}, "steps must be a whole number"),
        ({"prompt": "a", "guidance": "lots"}, "guidance must be a number"),
        ({"prompt": "a", "seed": -1}, "seed must be in"),
    ],
)
def test_bad_values_become_error_rows(row: dict, message: str) -> None:
    rows = _prepare([row, {"prompt": "fine"}])
    assert rows[0]["status"] == "error" and rows[0]["stage"] == "input"
    assert message in rows[0]["error"]
    assert rows[1]["status"] == "ok"


def test_clashing_input_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        check_passthrough_columns(["prompt", "status"], ColumnMap())
    check_passthrough_columns(["prompt", "seed", "brand"], ColumnMap())


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64", 64), (" 64 ", 64), ("64.0", 64), ("6.4e1", 64), ("+64", 64), ("", 64), ("  ", 64)],
)
def test_numbers_are_parsed_from_text(text: str, expected: int) -> None:
    row = _prepare([{"prompt": "a", "width": text, "height": "32", "steps": "3", "guidance": " 2.5 "}])[0]
    assert (row["status"], row["width"], row["height"], row["steps"], row["guidance"]) == ("ok", expected, 32, 3, 2.5)


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        (2**63, "seed must be in [0, 2**63), got 9223372036854775808"),
        (2**64, "seed must be in [0, 2**63), got 18446744073709551616"),
        ("9223372036854775808", "seed must be in [0, 2**63)"),
        (-1, "seed must be in [0, 2**63), got -1"),
        (1.5, "seed must be a whole number, got 1.5"),
        ("1.5", "seed must be a whole number, got '1.5'"),
        ("12x", "seed must be a number, got '12x'"),
        (float("nan"), "seed must be finite, got nan"),
        ("nan", "seed must be a number, got 'nan'"),
        (float("inf"), "seed must be finite, got inf"),
        (True, "seed must be a number, got True"),
        ("1e999999999", "seed is out of range"),
    ],
)
def test_seeds_outside_the_range_are_error_rows(seed: object, message: str) -> None:
    row = _prepare([{"prompt": "a", "id": "x", "seed": seed}])[0]
    assert (row["status"], row["stage"], row["id"]) == ("error", "input", "x")
    assert message in row["error"]
    assert row["seed"] == derive_seed(0, "x")


def test_largest_seeds_are_exact() -> None:
    for seed in (2**63 - 1, "9223372036854775807", " 9223372036854775807 "):
        row = _prepare([{"prompt": "a", "seed": seed}])[0]
        assert (row["status"], row["seed"]) == ("ok", 2**63 - 1)


def test_huge_pass_through_integers_are_kept() -> None:
    table = pa.table({
        "prompt": ["a", "b"], "big": pa.array([2**64 - 1, None], pa.uint64()),
        "dec": pa.array([None, 10**30], pa.decimal128(38, 0)), "source": ["f", "f"], "source_row": [0, 1],
    })
    out = prepare_rows(table, columns=ColumnMap(), defaults=GenerationDefaults(), job_seed=0)
    assert out.schema.field("big").type == pa.uint64() and out.column("big").to_pylist() == [2**64 - 1, None]
    assert out.column("dec").equals(table.column("dec"))


def test_ids_are_their_text() -> None:
    rows = _prepare([{"prompt": "a", "id": "007"}, {"prompt": "a", "id": " 7 "}, {"prompt": "a", "id": 7},
                     {"prompt": "a", "id": 2**64}, {"prompt": "a", "id": 7.0}, {"prompt": "a", "id": "  "}])
    assert [r["id"] for r in rows] == ["007", " 7 ", "7", "18446744073709551616", "7.0", "day/prompts.csv#5"]


def test_text_that_is_not_utf8_is_an_error_record_keeping_its_id() -> None:
    from pipelines.rows import _prepare_one

    row = _prepare_one({"id": "007", "prompt": "a \ud800 cat", "source": "f", "source_row": 0},
                       defaults=GenerationDefaults(), job_seed=0)
    assert (row["status"], row["stage"], row["id"]) == ("error", "input", "007")
    assert "prompt is not valid Unicode text" in row["error"] and row["prompt"] == "a \\ud800 cat"
    bad_id = _prepare_one({"id": "x\udfff", "prompt": "a", "source": "f", "source_row": 0},
                          defaults=GenerationDefaults(), job_seed=0)
    assert bad_id["status"] == "error" and "id is not valid" in bad_id["error"] and bad_id["id"] == "x\\udfff"
