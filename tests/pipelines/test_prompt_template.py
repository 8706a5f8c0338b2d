"""Prompt templates (``pipelines.prompt_template``) and their filling in ``pipelines.rows.prepare_rows`` (no Ray).

Parsing at spec load, rendering values, the template winning over a prompt column, an empty value
as that row's error record, the preflight's missing-column message, the resume fingerprint, and a
property test: random column names, values and templates never raise; each row ends as a prompt
or as that row's error record.
"""

from __future__ import annotations

import datetime
import decimal
import json
import string
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import prompt_template
from pipelines.fingerprint import settings_of
from pipelines.rows import check_input_columns, prepare_rows
from pipelines.schema import Status
from pipelines.spec import ColumnMap, GenerationDefaults, SpecError, load_spec

DEFAULTS = GenerationDefaults()


def _spec(**extra: Any):
    return load_spec(raw={"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}, **extra})


def _prepare(rows: list[dict[str, Any]], *templates: prompt_template.Template, **kwargs: Any) -> list[dict]:
    table = pa.Table.from_pylist(rows)
    table = table.append_column("source", pa.array(["in.jsonl"] * len(rows)))
    table = table.append_column("source_row", pa.array(range(len(rows)), pa.int64()))
    out = prepare_rows(table, columns=kwargs.pop("columns", ColumnMap()), defaults=DEFAULTS, job_seed=1,
                       templates=templates, **kwargs)
    return out.to_pylist()


def test_parse_reads_plain_fields_in_order() -> None:
    template = prompt_template.parse("{product} on {background}, {product} {{literal}} {my col}", "prompt_template")
    assert template.fields == ("product", "background", "my col")
    text = template.fill({"product": "mug", "background": "oak", "my col": "x"})
    assert text == "mug on oak, mug {literal} x"


@pytest.mark.parametrize(("text", "says"), [
    ("{product", "not a valid template"),
    ("product}", "not a valid template"),
    ("a {} b", "positional field {}"),
    ("a {0} b", "positional field {0}"),
    ("{a.b}", "attribute or index"),
    ("{a[0]}", "attribute or index"),
    ("{a!r}", "conversion or format spec"),
    ("{a:>8}", "conversion or format spec"),
    ("no fields {{here}}", "names no column"),
])
def test_bad_templates_are_spec_errors_naming_the_key(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        prompt_template.parse(text, "prompt_template")
    with pytest.raises(SpecError, match=f"negative_prompt_template.*{says[:12]}"):
        _spec(negative_prompt_template=text)


def test_a_template_may_not_read_a_prompt_or_mapped_column() -> None:
    with pytest.raises(SpecError, match=r"\{prompt\} names a prompt column"):
        _spec(prompt_template="{prompt}, photo")
    with pytest.raises(SpecError, match=r"\{s\} names a prompt column or a column mapped"):
        _spec(prompt_template="{s} photo", input={"uri": "in.jsonl", "columns": {"seed": "s"}})
    assert _spec(prompt_template="{steps} steps of {thing}").template_columns() == ("steps", "thing")


def test_values_render_as_written() -> None:
    render = prompt_template.render
    assert [render(3), render(3.0), render(0.25), render(True), render("  x {y} ")] == ["3", "3.0", "0.25", "true",
                                                                                          "  x {y} "]
    assert render(decimal.Decimal("1.50")) == "1.50" and render(datetime.date(2026, 1, 2)) == "2026-01-02"
    assert render([1, "a"]) == '[1, "a"]' and render(b"caf\xc3\xa9") == "café"
    assert [render(None), render(float("nan")), render(""), render(" \t")] == [None, None, None, None]


def test_the_template_wins_and_an_empty_value_is_that_rows_error() -> None:
    prompt = prompt_template.parse("{product} on {background}", "prompt_template")
    negative = prompt_template.parse("blurry {product}", "negative_prompt_template")
    rows = _prepare([
        {"id": "a", "prompt": "ignored", "product": "mug", "background": "oak", "n": 3},
        {"id": "b", "product": "lamp", "background": "  "},
        {"id": "c", "product": None, "background": "oak"},
    ], prompt, negative)
    assert [row["status"] for row in rows] == [Status.OK, Status.ERROR, Status.ERROR]
    assert (rows[0]["prompt"], rows[0]["negative_prompt"]) == ("mug on oak", "blurry mug")
    assert rows[0]["product"] == "mug" and rows[0]["n"] == 3  # template columns pass through
    assert rows[1]["stage"] == "input"
    assert rows[1]["error"] == "prompt_template: column 'background' is empty in this row"
    assert rows[2]["error"] == "prompt_template: column 'product' is empty in this row"
    assert "prompt" not in json.loads(rows[2]["raw_input"])  # no half-made prompt in the record


def test_a_retried_record_is_filled_again_from_its_columns() -> None:
    """A record read back by retry-errors: its raw_input restores the canonical inputs, the template refills."""
    prompt = prompt_template.parse("{product} x", "prompt_template")
    failed = _prepare([{"id": "a", "product": "mug", "seed": "-1"}], prompt)[0]
    assert failed["status"] == Status.ERROR and "seed" in failed["error"]
    again = _prepare([{"id": "a", "product": "mug", "raw_input": json.dumps({"id": "a", "seed": "5"})}], prompt)[0]
    assert (again["status"], again["prompt"], again["seed"]) == (Status.OK, "mug x", 5)


def test_missing_template_column_stops_the_job_and_no_prompt_column_is_needed() -> None:
    spec = _spec(prompt_template="{product} on {background}")
    with pytest.raises(ValueError, match=r"prompt_template: column 'background' is not in the input in.jsonl"):
        check_input_columns(["id", "product"], spec.input.columns, uri="in.jsonl", templates=spec.templates())
    check_input_columns(["id", "product", "background"], spec.input.columns, uri="in.jsonl",
                        templates=spec.templates())  # no prompt column: fine with a prompt_template
    with pytest.raises(ValueError, match="input.columns.prompt"):
        check_input_columns(["id", "product"], spec.input.columns, uri="in.jsonl")


def test_the_templates_are_in_the_resume_fingerprint() -> None:
    plain = settings_of(_spec())
    one = settings_of(_spec(prompt_template="{a} photo"))
    other = settings_of(_spec(prompt_template="{a} drawing", negative_prompt_template="blurry {a}"))
    assert "prompt_template" not in plain  # earlier outputs still resume
    assert one["prompt_template"] == "{a} photo"
    assert (other["prompt_template"], other["negative_prompt_template"]) == ("{a} drawing", "blurry {a}")


# --- property: random names, values, templates: every row a prompt or its own error, never an exception ----
_names = st.text(alphabet=string.ascii_letters + "_ é中-", min_size=1, max_size=8).filter(
    lambda n: n.strip() and not n.isdigit() and n not in ("prompt", "negative_prompt", "id", "source", "source_row"))
_values = st.one_of(
    st.none(), st.text(max_size=12), st.sampled_from(["{", "}", "{x}", "{{", "  ", "", "\U0001f600"]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True), st.booleans(),
)
_literals = st.text(max_size=6).map(lambda t: t.replace("{", "{{").replace("}", "}}"))


@st.composite
def _cases(draw: st.DrawFn) -> tuple[str, list[str], list[dict[str, Any]]]:
    names = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    used = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4))
    text = "".join(draw(_literals) + "{" + name + "}" for name in used) + draw(_literals)
    kinds = {name: draw(st.sampled_from(["text", "int", "float", "bool", "any"])) for name in names}
    strategies = {"text": st.none() | st.text(max_size=8), "int": st.none() | st.integers(-(2**63), 2**63 - 1),
                  "float": st.none() | st.floats(), "bool": st.none() | st.booleans(), "any": _values}

    def cell(name: str) -> Any:
        value = draw(strategies[kinds[name]])
        return json.dumps(value) if kinds[name] == "any" and value is not None and not isinstance(value, str) else value

    rows = [{name: cell(name) for name in names} for _ in range(draw(st.integers(1, 5)))]
    return text, names, rows


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_property_every_row_is_a_prompt_or_its_own_error(case: tuple[str, list[str], list[dict[str, Any]]]) -> None:
    text, _, rows = case
    template = prompt_template.parse(text, "prompt_template")
    out = _prepare([{"id": f"r{i}", **row} for i, row in enumerate(rows)], template)
    assert [row["id"] for row in out] == [f"r{i}" for i in range(len(rows))]
    for raw, row in zip(rows, out):
        missing = [n for n in template.fields if prompt_template.render(raw[n]) is None]
        if missing:
            assert row["status"] == Status.ERROR and row["stage"] == "input"
            assert f"column {missing[0]!r} is empty" in row["error"]
        elif row["status"] == Status.OK:
            assert row["prompt"] == template.fill(raw) and row["prompt"].strip()
        else:  # the filled text is blank (whitespace literals) or not valid Unicode: the row's own error
            assert row["stage"] == "input" and row["error"]
