"""``input.grid`` (``pipelines.grid``) without Ray: spec rules, ids, the product's order, the listing's schemas.

Ids are unique, stable and escaped (property test over random keys and values); the driver-side
functions that take a listing (schemas, the resume record) work with a grid as with files.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import grid as grids
from pipelines.fingerprint import input_of
from pipelines.rows import check_input_columns
from pipelines.sources import GRID_FORMAT, input_schema, list_input_files, passthrough_schema
from pipelines.spec import SpecError, load_spec


def _spec(grid: Any, **extra: Any):
    """A grid job; its prompt is the first key's value unless ``extra`` sets a template (or the grid a prompt)."""
    if isinstance(grid, dict) and grid and "prompt" not in grid:
        extra.setdefault("prompt_template", "{" + next(iter(grid)) + "}")
    return load_spec(raw={"input": {"grid": grid, **extra.pop("input", {})}, "output": {"uri": "out"}, **extra})


def test_rows_are_the_product_in_written_order_with_ids_from_values() -> None:
    spec = _spec({"product": ["mug", "lamp"], "background": ["marble", "oak"], "n": [1]})
    rows = list(grids.grid_rows(spec.input.grid, id_column="id"))
    assert [(r["product"], r["background"]) for r in rows] == [("mug", "marble"), ("mug", "oak"), ("lamp", "marble"),
                                                               ("lamp", "oak")]
    assert rows[0] == {"id": "product=mug/background=marble/n=1", "product": "mug", "background": "marble", "n": 1}
    assert grids.size(spec.input.grid) == 4


def test_ids_escape_separators_and_shorten_long_ones() -> None:
    assert grids.grid_id({"a b": "x/y=z", "é": "100%~"}) == "a%20b=x%2Fy%3Dz/%C3%A9=100%25%7E"
    assert grids.grid_id({"flag": True, "f": 0.5, "i": 3}) == "flag=true/f=0.5/i=3"
    long = grids.grid_id({"text": "w" * 300})
    assert len(long) == grids.MAX_ID_CHARS and long.startswith("text=www") and re.search(r"~[0-9a-f]{16}$", long)
    assert long != grids.grid_id({"text": "w" * 301})
    assert grids.grid_id({"text": "w" * 300}) == long  # stable


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.text(min_size=1, max_size=6),
    st.lists(st.one_of(st.text(max_size=60), st.integers(), st.booleans(),
                       st.floats(allow_nan=False, allow_infinity=False)), min_size=1, max_size=4),
    min_size=1, max_size=3,
))
def test_property_ids_are_unique_safe_and_stable(grid: dict[str, list[Any]]) -> None:
    try:
        grids.check_grid(grid)
    except ValueError as error:  # a value listed twice: the only rule random scalars can break
        assert "listed twice" in str(error)
        return
    ids = [row["id"] for row in grids.grid_rows(grid, id_column="id")]
    assert len(ids) == len(set(ids)) == grids.size(grid)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-%=/~]+", i) and len(i) <= grids.MAX_ID_CHARS for i in ids)
    assert ids == [row["id"] for row in grids.grid_rows(grid, id_column="id")]


@pytest.mark.parametrize(("grid", "says"), [
    ({}, "name at least one column"),
    ({"a": []}, "input.grid.a: the list of values is empty"),
    ({"a": [[1]]}, "input.grid.a.0"),
    ({"a": [{"b": 1}]}, "input.grid.a.0"),
    ({"a": [None]}, "input.grid.a.0"),
    ({"a": [1, "1"]}, "the value '1' is listed twice"),
    ({"a": [float("inf")]}, "not a finite number"),
    ({"status": ["x"]}, "input.grid.status: 'status' is a column pixelmill writes"),
    ({"id": ["x"]}, "input.grid.id"),
    ({"a": list(range(1001)), "b": list(range(1000))}, "1,001,000 rows, above the cap of 1,000,000"),
])
def test_bad_grids_are_spec_errors(grid: Any, says: str) -> None:
    with pytest.raises(SpecError, match=re.escape(says)):
        _spec(grid)


def test_exactly_one_of_uri_and_grid_and_no_id_mapping() -> None:
    with pytest.raises(SpecError, match="exactly one of uri"):
        load_spec(raw={"input": {"uri": "in.jsonl", "grid": {"a": [1]}}, "output": {"uri": "out"}})
    with pytest.raises(SpecError, match="exactly one of uri"):
        load_spec(raw={"input": {}, "output": {"uri": "out"}})
    with pytest.raises(SpecError, match="input.columns.id"):
        _spec({"a": [1]}, input={"columns": {"id": "a"}})
    with pytest.raises(SpecError, match="input.format: a grid is no file"):
        _spec({"a": [1]}, input={"format": "csv"})
    spec = _spec({"steps": [1, 2], "prompt": ["a red circle"]})  # canonical fields may be grid keys
    assert spec.input.uri is None and spec.input.name == "input.grid"


def test_the_listing_schemas_and_resume_record_of_a_grid() -> None:
    spec = _spec({"product": ["mug"], "n": [1, 2.5], "mixed": [1, "a"], "steps": [1]},
                 prompt_template="{product} x{n}")
    listing = list_input_files(spec.input)
    assert listing[3] == GRID_FORMAT
    names = input_schema(listing, columns=spec.input.columns).names
    assert names[:5] == ["id", "product", "n", "mixed", "steps"]
    check_input_columns(names, spec.input.columns, uri=spec.input.name, templates=spec.templates())
    with pytest.raises(SpecError, match="prompt_template: column 'look' is not a key of input.grid"):
        _spec({"product": ["mug"]}, prompt_template="{product} {look}")  # known at spec load for a grid
    # template columns are read as text (not pass-through typed); the others keep one type for the grid
    passthrough = passthrough_schema(listing, columns=spec.input.columns, extra_text=spec.template_columns())
    assert passthrough.names == ["mixed"] and passthrough.field("mixed").metadata  # JSON text: 1 and "a"
    record = input_of(listing, positional_ids=False)
    assert record["files"] == [] and not record["positional_ids"]
    other = input_of(list_input_files(_spec({"product": ["mug", "cup"]}).input), positional_ids=False)
    assert record["sha256"] != other["sha256"]
