"""Row preparation: column mapping, stable ids and seeds, per-row overrides, bad values as error rows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines.rows import check_passthrough_columns, derive_seed, prepare_rows
from pipelines.spec import ColumnMap, GenerationDefaults


def _prepare(rows: list[dict], columns: ColumnMap | None = None, seed: int = 0) -> list[dict]:
    """Prepare each row as its own one-row table (an Arrow column has one type; these rows may differ)."""
    out: list[dict] = []
    for number, row in enumerate(rows):
        table = pa.Table.from_pylist([{**row, "source": "day/prompts.csv", "source_row": number}])
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
