"""One schema per output: the pass-through type policy (issue 15, kind 1; ``pipelines.column_types``)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines import column_types
from pipelines.column_types import conform, decide, for_run, is_json_text, json_text_field, restore, unify
from pipelines.schema import INPUT_ERROR_COLUMN
from pipelines.sources import list_input_files, passthrough_schema
from pipelines.spec import ColumnMap, InputSpec


@pytest.mark.parametrize(("a", "b", "want"), [
    (pa.int32(), pa.int64(), pa.int64()),
    (pa.uint8(), pa.int8(), pa.int16()),
    (pa.uint32(), pa.int64(), pa.int64()),
    (pa.uint64(), pa.int64(), None),  # no integer type holds both
    (pa.int64(), pa.float64(), pa.float64()),
    (pa.float32(), pa.float64(), pa.float64()),
    (pa.decimal128(10, 2), pa.decimal128(10, 4), pa.decimal128(12, 4)),  # 8 integer digits, 4 decimals
    (pa.decimal128(38, 0), pa.decimal128(38, 10), pa.decimal256(48, 10)),
    (pa.string(), pa.large_string(), pa.large_string()),
    (pa.null(), pa.list_(pa.int64()), pa.list_(pa.int64())),
    (pa.int64(), pa.string(), None),
    (pa.list_(pa.int64()), pa.list_(pa.string()), None),
    (pa.timestamp("s"), pa.timestamp("ms"), None),
])
def test_unify_takes_the_type_that_holds_both_exactly(a: pa.DataType, b: pa.DataType, want: pa.DataType | None) -> None:
    assert unify(a, b) == want and unify(b, a) == want


def test_conflicting_columns_become_json_text_and_own_columns_are_not_pass_through() -> None:
    declared = decide([
        pa.schema([("rank", pa.int64()), ("note", pa.null()), ("n", pa.int32()), ("prompt", pa.string()),
                   ("status", pa.string()), (INPUT_ERROR_COLUMN, pa.string())]),
        pa.schema([("rank", pa.string()), ("note", pa.null()), ("n", pa.int64()), ("extra", pa.bool_())]),
    ], consumed={"prompt"})
    assert declared.names == ["rank", "note", "n", "extra"]
    assert is_json_text(declared.field("rank")) and declared.field("rank").type == pa.string()
    assert declared.field("note").type == pa.string() and not is_json_text(declared.field("note"))
    assert declared.field("n").type == pa.int64() and declared.field("extra").type == pa.bool_()


def test_conform_writes_json_text_for_every_value_and_adds_missing_columns() -> None:
    declared = pa.schema([json_text_field("rank"), pa.field("dec", pa.decimal128(10, 2))])
    ints = conform(pa.table({"rank": pa.array([3, None], pa.int64())}), declared)
    texts = conform(pa.table({"rank": ["third", "3"]}), declared)
    assert ints.column("rank").to_pylist() == ["3", None]
    assert texts.column("rank").to_pylist() == ['"third"', '"3"']  # text and number stay distinguishable
    assert [json.loads(v) for v in texts.column("rank").to_pylist()] == ["third", "3"]
    assert ints.schema.field("dec").type == pa.decimal128(10, 2) and ints.column("dec").null_count == 2
    assert ints.schema.field("rank").equals(declared.field("rank"), check_metadata=True)
    assert INPUT_ERROR_COLUMN not in ints.column_names


def test_a_value_that_does_not_fit_the_committed_type_is_its_rows_error() -> None:
    committed = pa.schema([("rank", pa.int64()), ("score", pa.float64()), ("note", pa.string())])
    table = pa.table({"rank": ["3", "third", None], "score": pa.array([1, 2**60 + 1, 2], pa.int64()),
                      "note": pa.array([7, None, 8], pa.int64()),
                      INPUT_ERROR_COLUMN: pa.array([None, None, "line 3 is broken"], pa.string())})
    out = conform(table, committed)
    # text is never parsed into a number ("3" and "007" are text): both rows fail
    assert out.schema.field("rank").type == pa.int64() and out.column("rank").to_pylist() == [None, None, None]
    assert out.column("score").to_pylist() == [1.0, None, 2.0]  # 2**60 + 1 is no double
    assert out.column("note").to_pylist() == ["7", None, "8"]  # a text column takes numbers as JSON text
    errors = out.column(INPUT_ERROR_COLUMN).to_pylist()
    assert errors[0] == "column 'rank' holds \"3\", which this output stores as int64"
    assert "'rank' holds \"third\", which this output stores as int64" in errors[1]
    assert "'score' holds 1152921504606846977, which this output stores as double" in errors[1]
    assert errors[2] == "line 3 is broken"


def test_jsonl_values_fit_the_declared_field_or_fail_their_row() -> None:
    array, reasons = column_types.to_column([1, "x", 2.5, None, {"k": 1}], pa.field("v", pa.float64()))
    assert array.to_pylist() == [1.0, None, 2.5, None, None]
    assert [r is None for r in reasons] == [True, False, True, True, False]
    structs, reasons = column_types.to_column([{"k": 1}, {"j": "a"}], pa.field("s", pa.struct([("k", pa.int64()),
                                                                                              ("j", pa.string())])))
    assert structs.to_pylist() == [{"k": 1, "j": None}, {"k": None, "j": "a"}] and reasons == [None, None]


def test_restore_puts_back_what_the_stages_changed() -> None:
    declared = pa.schema([pa.field("dec", pa.decimal128(10, 2)), json_text_field("rank"), ("gone", pa.int64())])
    shard = pa.table({"dec": pa.array([Decimal("1.5")], pa.decimal128(4, 1)), "rank": ['"a"']})
    out = restore(shard, declared)
    assert out.schema.field("dec").type == pa.decimal128(10, 2) and out.column("dec")[0].as_py() == Decimal("1.5")
    assert is_json_text(out.schema.field("rank")) and out.column("gone").to_pylist() == [None]


def test_a_later_run_keeps_the_committed_schema_and_refuses_new_columns() -> None:
    committed = pa.schema([("rank", pa.int64())])
    assert for_run(pa.schema([("rank", pa.string())]), committed) == committed
    assert for_run(pa.schema([]), committed) == committed
    assert for_run(pa.schema([("a", pa.int8())]), None) == pa.schema([("a", pa.int8())])
    with pytest.raises(ValueError, match=r"\['extra'\] are not in this output's shards"):
        for_run(pa.schema([("rank", pa.int64()), ("extra", pa.string())]), committed)


def test_the_input_scan_reads_every_jsonl_batch_and_every_parquet_footer(tmp_path: Path) -> None:
    jsonl = tmp_path / "j"
    jsonl.mkdir()
    (jsonl / "a.jsonl").write_text("".join(json.dumps({"prompt": "p", "rank": i, "seed": 1}) + "\n" for i in range(3)))
    (jsonl / "b.jsonl").write_text(json.dumps({"prompt": "p", "rank": "third", "meta": {"k": 1}}) + "\n")
    declared = passthrough_schema(list_input_files(InputSpec(uri=str(jsonl))), columns=ColumnMap())
    assert declared.names == ["rank", "meta"] and is_json_text(declared.field("rank"))
    assert declared.field("meta").type == pa.struct([("k", pa.int64())])

    parquet = tmp_path / "p"
    parquet.mkdir()
    pq.write_table(pa.table({"prompt": ["p"], "n": pa.array([1], pa.int32())}), parquet / "a.parquet")
    pq.write_table(pa.table({"prompt": ["p"], "n": pa.array([2**40], pa.int64()), "only": [True]}),
                   parquet / "b.parquet")
    declared = passthrough_schema(list_input_files(InputSpec(uri=str(parquet))), columns=ColumnMap())
    assert declared == pa.schema([("n", pa.int64()), ("only", pa.bool_())])


# ---- end to end, through Ray -------------------------------------------------------------------------------------


def _spec(tmp_path: Path, source: Path, model_cache: str, **output):
    from pipelines.spec import load_spec

    raw = {"input": {"uri": str(source)},
           "output": {"uri": str(tmp_path / "out"), "samples_per_shard": 2, "report": False, **output},
           "model": {"cache_dir": model_cache}, "score": None,
           "defaults": {"width": 32, "height": 32, "steps": 1}}
    return load_spec(raw=raw)


def _shard_parquets(out: Path) -> list[Path]:
    return sorted(out.glob("[0-9]*.parquet"))


def test_files_of_conflicting_types_write_one_schema(ray_session, tmp_path: Path, model_cache: str) -> None:
    from datasets import load_dataset

    from pipelines.runner import run_job
    from tests.pipelines.readback import check_exactly_once, read_output

    source = tmp_path / "in"
    source.mkdir()
    # meta.rank is an int in a.jsonl and text in b.jsonl; n is int32 in one Parquet sense and
    # int64 in the other (here: small ints, then one past 2**31); 'only' is in one file
    (source / "a.jsonl").write_text("".join(
        json.dumps({"id": f"a{i}", "prompt": "a red circle", "rank": i, "n": i}) + "\n" for i in range(3)))
    (source / "b.jsonl").write_text("".join(
        json.dumps({"id": f"b{i}", "prompt": "a blue square", "rank": f"r{i}", "n": 2**40, "only": [i]}) + "\n"
        for i in range(3)))
    summary = run_job(_spec(tmp_path, source, model_cache))
    assert summary.balanced and summary.images == 6, summary.equation
    out = tmp_path / "out"
    files = _shard_parquets(out)
    assert len(files) == 3
    schemas = [pq.read_schema(f) for f in files]
    assert all(s.equals(schemas[0], check_metadata=False) for s in schemas), schemas
    whole = pads.dataset([str(f) for f in files], format="parquet").to_table()  # one table, no unification
    rows = {r["id"]: r for r in whole.to_pylist()}
    assert rows["a1"]["rank"] == "1" and rows["b1"]["rank"] == '"r1"'
    assert rows["a1"]["n"] == 1 and rows["b0"]["n"] == 2**40 and whole.schema.field("n").type == pa.int64()
    assert rows["a0"]["only"] is None and rows["b2"]["only"] == [2]
    check_exactly_once(read_output(str(out)), [f"a{i}" for i in range(3)] + [f"b{i}" for i in range(3)])
    loaded = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(loaded["json"][i]["rank"] for i in range(6)) == sorted(['"r0"', '"r1"', '"r2"', "0", "1", "2"])


def test_an_append_keeps_the_committed_schema(ray_session, tmp_path: Path, model_cache: str) -> None:
    from pipelines.runner import PreflightError, run_job

    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps({"id": f"a{i}", "prompt": "a red circle", "rank": i}) + "\n" for i in range(2)))
    assert run_job(_spec(tmp_path, first, model_cache)).balanced
    second = tmp_path / "second.jsonl"
    second.write_text(json.dumps({"id": "b0", "prompt": "a blue square", "rank": 7}) + "\n"
                      + json.dumps({"id": "b1", "prompt": "a blue square", "rank": "third"}) + "\n")
    summary = run_job(_spec(tmp_path, second, model_cache), mode="append")
    assert summary.balanced and summary.images == 1 and summary.errors == 1, summary.equation
    files = _shard_parquets(tmp_path / "out")
    assert {pq.read_schema(f).field("rank").type for f in files} == {pa.int64()}
    whole = pads.dataset([str(f) for f in files], format="parquet").to_table()
    rows = {r["id"]: r for r in whole.to_pylist()}
    assert rows["b0"]["rank"] == 7 and rows["b0"]["status"] == "ok"
    assert rows["b1"]["status"] == "error" and "'rank' holds \"third\", which this output stores as int64" in rows[
        "b1"]["error"]

    third = tmp_path / "third.jsonl"
    third.write_text(json.dumps({"id": "c0", "prompt": "a green star", "rank": 1, "extra": "x"}) + "\n")
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    with pytest.raises(PreflightError, match=r"\['extra'\] are not in this output's shards"):
        run_job(_spec(tmp_path, third, model_cache), mode="append")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
