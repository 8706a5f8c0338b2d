"""Property-based tests of ``pipelines.rows`` (no Ray): random raw rows and tables in, canonical rows out.

Every input row comes out exactly once, as an ``ok`` row carrying exactly its values or as an
error record (``stage="input"``, a reason); ids are kept; pass-through columns of any Arrow type
come out as the same values; nothing raises, whatever the values (huge integers, NaN, odd text).
"""

from __future__ import annotations

import datetime
import decimal
import math
from fractions import Fraction
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.rows import SEED_LIMIT, _prepare_one, derive_seed, prepare_rows
from pipelines.schema import CANONICAL_COLUMNS
from pipelines.spec import ColumnMap, GenerationDefaults

DEFAULTS = GenerationDefaults()
JOB_SEED = 3
SOURCE = "in/prompts.parquet"
MISSING = "missing"  # an expected value: the cell is absent (the default applies)
INVALID = "invalid"  # an expected value: the cell makes its row an error record
INT_FIELDS = ("width", "height", "steps")
SETTINGS = settings(max_examples=200, deadline=None)

# --- cells: (the raw value, what it means: a Fraction, MISSING or INVALID) -----------------------
_huge_ints = st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from(
    [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), 0, 8, 64]
)
_decimals = st.decimals(min_value=-(10**22), max_value=10**22, allow_nan=False, allow_infinity=False)
_garbage_text = st.sampled_from(
    ["12x", "nan", "NaN", "inf", "-Infinity", "0x40", "1_000", "--1", "1e", ".", "e5", "六十四", "1e999999999"]
)


def _int_cell(n: int) -> st.SearchStrategy[tuple[Any, Any]]:
    return st.just((n, Fraction(n)))


def _text_cells() -> st.SearchStrategy[tuple[Any, Any]]:
    """Numbers written as text, as CSV cells or JSON text arrive."""
    exact_int = _huge_ints.flatmap(
        lambda n: st.sampled_from([str(n), f" {n} ", f"{n}.0", f"{n}e0", f"\t{n}\n"]).map(lambda t: (t, Fraction(n)))
    )
    exact_decimal = _decimals.map(lambda d: (str(d), Fraction(d)))
    empty = st.sampled_from(["", "  ", "\t"]).map(lambda t: (t, MISSING))
    return exact_int | exact_decimal | empty | _garbage_text.map(lambda t: (t, INVALID)) | st.none().map(
        lambda _: (None, MISSING)
    )


def _float_cells() -> st.SearchStrategy[tuple[Any, Any]]:
    return st.floats(allow_nan=True, allow_infinity=True).map(
        lambda f: (f, Fraction(f) if math.isfinite(f) else INVALID)
    ) | st.none().map(lambda _: (None, MISSING))


def _int_cells(low: int, high: int) -> st.SearchStrategy[tuple[Any, Any]]:
    values = st.integers(min_value=low, max_value=high) | st.sampled_from([low, high, 0, 8, 64])
    return values.map(lambda n: (n, Fraction(n))) | st.none().map(lambda _: (None, MISSING))


# An Arrow type for a numeric canonical column, and cells that fit it.
_NUMERIC_COLUMNS: dict[str, tuple[pa.DataType, st.SearchStrategy[tuple[Any, Any]]]] = {
    "int64": (pa.int64(), _int_cells(-(2**63), 2**63 - 1)),
    "uint64": (pa.uint64(), _int_cells(0, 2**64 - 1)),
    "float64": (pa.float64(), _float_cells()),
    "string": (pa.string(), _text_cells()),
}


def _valid(name: str, meaning: Any) -> bool:
    if meaning == MISSING:
        return True
    if meaning == INVALID:
        return False
    if name == "guidance":
        return meaning >= 0
    whole = meaning.denominator == 1
    if name == "seed":
        return whole and 0 <= meaning < SEED_LIMIT
    in_range = whole and 0 < meaning < 2**63
    return in_range and (name == "steps" or meaning % 8 == 0)


def _expected(name: str, meaning: Any) -> Any:
    if meaning == MISSING:
        return getattr(DEFAULTS, name)
    return float(meaning) if name == "guidance" else int(meaning)


# --- pass-through columns of random Arrow types --------------------------------------------------
_text = st.text(max_size=12)  # hypothesis' text has no lone surrogates: Arrow strings cannot hold them
_PASSTHROUGH_TYPES: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.int64(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    (pa.uint64(), st.integers(min_value=0, max_value=2**64 - 1) | st.just(2**64 - 1)),
    (pa.float64(), st.floats()),
    (pa.float32(), st.floats(width=32)),
    (pa.bool_(), st.booleans()),
    (pa.string(), _text),
    (pa.large_string(), _text),
    (pa.binary(), st.binary(max_size=8)),
    (pa.decimal128(38, 4), st.decimals(min_value=-(10**30), max_value=10**30, places=4)),
    (pa.date32(), st.dates()),
    (pa.timestamp("us"), st.datetimes()),
    (pa.timestamp("us", tz="UTC"), st.datetimes(timezones=st.just(datetime.UTC))),
    (pa.time64("us"), st.times()),
    (pa.list_(pa.string()), st.lists(st.none() | _text, max_size=3)),
    (pa.struct([("a", pa.int64()), ("b", pa.string())]),
     st.fixed_dictionaries({"a": st.none() | st.integers(-(2**63), 2**63 - 1), "b": st.none() | _text})),
    (pa.map_(pa.string(), pa.int64()),
     st.lists(st.tuples(_text, st.none() | st.integers(-(2**63), 2**63 - 1)), max_size=3)),
    (pa.null(), st.none()),
]


@st.composite
def _passthrough(draw: st.DrawFn, rows: int) -> dict[str, pa.Array]:
    names = draw(st.lists(st.from_regex(r"x_[a-z0-9]{1,6}", fullmatch=True), max_size=4, unique=True))
    columns = {}
    for name in names:
        kind, values = draw(st.sampled_from(_PASSTHROUGH_TYPES))
        cells = draw(st.lists(st.none() | values, min_size=rows, max_size=rows))
        columns[name] = pa.array(cells, type=kind)
    return columns


@st.composite
def _tables(draw: st.DrawFn) -> tuple[pa.Table, ColumnMap, dict[str, list[Any]]]:
    """A raw table, its column map, and per canonical field the meaning of every cell."""
    rows = draw(st.integers(min_value=0, max_value=8))
    mapped = draw(st.booleans())
    columns = ColumnMap(prompt="text", id="uid", seed="s") if mapped else ColumnMap()
    data: dict[str, pa.Array] = {}
    meanings: dict[str, list[Any]] = {}
    prompts = draw(st.lists(st.none() | _text | st.sampled_from(["a cat", " ", ""]), min_size=rows, max_size=rows))
    data[columns.prompt] = pa.array(prompts, type=pa.string())
    meanings["prompt"] = prompts
    if draw(st.booleans()):
        ids = draw(st.lists(_text | st.sampled_from(["007", " 7 ", "7"]), min_size=rows, max_size=rows, unique=True))
        data[columns.id or "id"] = pa.array(ids, type=pa.string())
        meanings["id"] = ids
    for name in ("seed", "width", "height", "steps", "guidance"):
        if not draw(st.booleans()):
            continue
        kind, cells = _NUMERIC_COLUMNS[draw(st.sampled_from(sorted(_NUMERIC_COLUMNS)))]
        drawn = draw(st.lists(cells, min_size=rows, max_size=rows))
        data[getattr(columns, name) or name] = pa.array([value for value, _ in drawn], type=kind)
        meanings[name] = [meaning for _, meaning in drawn]
    if draw(st.booleans()):
        data["negative_prompt"] = pa.array(draw(st.lists(st.none() | _text, min_size=rows, max_size=rows)), pa.string())
    data.update(draw(_passthrough(rows)))
    data["source"] = pa.array([SOURCE] * rows, type=pa.string())
    data["source_row"] = pa.array(range(rows), type=pa.int64())
    order = draw(st.permutations(sorted(data)))
    return pa.table({name: data[name] for name in order}), columns, meanings


def _same(left: Any, right: Any) -> bool:
    """Equality of Python values where NaN equals NaN."""
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return True
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    return type(left) is type(right) and left == right


@SETTINGS
@given(_tables())
def test_every_row_comes_out_once_with_its_values(case: tuple[pa.Table, ColumnMap, dict[str, list[Any]]]) -> None:
    table, columns, meanings = case
    out = prepare_rows(table, columns=columns, defaults=DEFAULTS, job_seed=JOB_SEED)

    assert out.num_rows == table.num_rows
    assert tuple(out.column_names[: len(CANONICAL_COLUMNS)]) == CANONICAL_COLUMNS
    assert out.column("source_row").to_pylist() == list(range(table.num_rows))  # once each, in order
    consumed = {*CANONICAL_COLUMNS, *ColumnMap.model_fields, *columns.overrides().values()}
    passthrough = [name for name in table.column_names if name not in consumed]
    assert out.column_names[len(CANONICAL_COLUMNS):] == passthrough
    for name in passthrough:
        assert out.schema.field(name).type == table.schema.field(name).type
        assert _same(out.column(name).to_pylist(), table.column(name).to_pylist())

    for i, row in enumerate(out.to_pylist()):
        given_id = meanings.get("id", [None] * table.num_rows)[i]
        expected_id = given_id if given_id is not None and given_id.strip() else f"{SOURCE}#{i}"
        assert row["id"] == expected_id
        prompt = meanings["prompt"][i]
        numbers_ok = all(_valid(name, meanings[name][i]) for name in meanings if name not in ("prompt", "id"))
        if isinstance(prompt, str) and prompt.strip() and numbers_ok:
            assert row["status"] == "ok" and row["stage"] == "" and row["error"] == "", row
            assert row["prompt"] == prompt
            for name in ("width", "height", "steps", "guidance"):
                assert row[name] == _expected(name, meanings.get(name, [MISSING] * (i + 1))[i])
            seed = meanings.get("seed", [MISSING] * (i + 1))[i]
            assert row["seed"] == (derive_seed(JOB_SEED, expected_id) if seed == MISSING else int(seed))
        else:
            assert row["status"] == "error" and row["stage"] == "input" and row["error"], row
            assert row["seed"] == derive_seed(JOB_SEED, expected_id)


# --- one row of arbitrary Python values (what no Arrow column can hold: lone surrogates, mixed types) ---
_odd_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=10) | st.sampled_from(
    ["\ud800", "a\udfffb", "", " ", "\u3000", "007", " 64 ", "64.0", "1e3", "12x", "nan", "\x00"]
)
_any_value = (
    st.none() | st.booleans() | _huge_ints | st.floats() | _odd_text | st.binary(max_size=6)
    | st.decimals(allow_nan=True, allow_infinity=True) | st.dates() | st.lists(st.integers(), max_size=2)
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["id", "prompt", "negative_prompt", "seed", "width", "height", "steps",
                                        "guidance", "_pm_input_error"]), _any_value))
def test_any_values_give_a_row_never_an_exception(raw: dict[str, Any]) -> None:
    raw = {**raw, "source": SOURCE, "source_row": 4}
    row = _prepare_one(raw, defaults=DEFAULTS, job_seed=JOB_SEED)
    assert list(row) == list(CANONICAL_COLUMNS)
    for name in ("id", "prompt", "negative_prompt", "status", "stage", "error"):
        assert isinstance(row[name], str)
        row[name].encode("utf-8")  # never a lone surrogate: Arrow and Parquet must hold it
    for name in ("seed", *INT_FIELDS):
        assert type(row[name]) is int and 0 <= row[name] < 2**63
    assert type(row["guidance"]) is float and math.isfinite(row["guidance"]) and row["guidance"] >= 0
    given_id = raw.get("id")
    if isinstance(given_id, str) and given_id.strip():
        assert row["id"] == given_id.encode("utf-8", "backslashreplace").decode("utf-8")  # as written
    if row["status"] == "ok":
        assert row["stage"] == "" and row["error"] == "" and raw.get("_pm_input_error") is None
        assert isinstance(raw.get("prompt"), str) and raw["prompt"].strip() and row["prompt"] == raw["prompt"]
    else:
        assert row["status"] == "error" and row["stage"] == "input" and row["error"]


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-(2**80), max_value=2**80), st.sampled_from(["int", "text", "decimal"]))
def test_seed_range_is_exactly_0_to_2_pow_63(seed: int, form: str) -> None:
    value: Any = {"int": seed, "text": f" {seed} ", "decimal": decimal.Decimal(seed)}[form]
    row = _prepare_one({"prompt": "a", "seed": value, "source": SOURCE, "source_row": 0},
                       defaults=DEFAULTS, job_seed=JOB_SEED)
    if 0 <= seed < 2**63:
        assert (row["status"], row["seed"]) == ("ok", seed)
    else:
        assert row["status"] == "error" and "seed must be in [0, 2**63)" in row["error"]
