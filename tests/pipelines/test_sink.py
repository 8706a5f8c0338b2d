"""The sink's sample JSON: one lossless rule per Arrow type; timings stay out of the tars."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import tarfile
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.layout import OutputLayout
from pipelines.sink import ShardDatasink, json_value
from pipelines.spec import OutputSpec

PASS_THROUGH = pa.table({
    "dec": pa.array([Decimal("12.30"), None], pa.decimal128(10, 2)),
    "tags": pa.array([["a", "b"], []], pa.list_(pa.string())),
    "at": pa.array([dt.time(12, 30, 1, 5), None], pa.time64("us")),
    "day": pa.array([dt.date(2026, 11, 30), dt.date(1970, 1, 1)], pa.date32()),
    "ts": pa.array([dt.datetime(2026, 11, 30, 1, 2, 3, tzinfo=dt.UTC), None], pa.timestamp("ms", "UTC")),
    "rec": pa.array([{"k": 1}, {"k": 2**62}], pa.struct([("k", pa.int64())])),
    "blob": pa.array([b"\x00\xff", b""], pa.binary()),
    "huge": pa.array([2**64 - 1, 0], pa.uint64()),
    "m": pa.array([[("x", 1)], []], pa.map_(pa.string(), pa.int64())),
    "f": pa.array([float("nan"), float("-inf")], pa.float64()),
    "wait": pa.array([dt.timedelta(seconds=90), None], pa.duration("s")),
})


def test_every_arrow_type_has_a_lossless_json_rule() -> None:
    rows = PASS_THROUGH.to_pylist()
    encoded = json.loads(json.dumps([{k: json_value(v) for k, v in row.items()} for row in rows]))
    first, second = encoded
    assert first["dec"] == "12.30" and Decimal(first["dec"]) == Decimal("12.30")
    assert first["tags"] == ["a", "b"] and second["tags"] == []
    assert first["at"] == "12:30:01.000005" and dt.time.fromisoformat(first["at"]) == rows[0]["at"]
    assert first["day"] == "2026-11-30"
    assert dt.datetime.fromisoformat(first["ts"]) == rows[0]["ts"]
    assert first["rec"] == {"k": 1} and second["rec"] == {"k": 2**62}
    assert base64.b64decode(first["blob"]["base64"]) == b"\x00\xff"
    assert first["huge"] == 2**64 - 1
    assert first["m"] == {"x": 1} and second["m"] == []
    assert first["f"] == "NaN" and second["f"] == "-Infinity"
    assert first["wait"] == 90.0 and second["wait"] is None
    assert json_value([(1, "a"), (2, "b")]) == [[1, "a"], [2, "b"]]  # a map with non-text keys


def _shard_rows(table: pa.Table) -> pa.Table:
    n = table.num_rows
    base = pa.table({
        "id": [f"r{i}" for i in range(n)], "prompt": [f"p{i}" for i in range(n)], "status": ["ok"] * n,
        "stage": [""] * n, "error": [""] * n, "image": [b"png"] * n, "generate_s": [0.5 + i for i in range(n)],
    })
    for name in table.column_names:
        base = base.append_column(name, table.column(name))
    return base


def test_a_shard_keeps_every_pass_through_type_and_its_samples_leave_out_timings(tmp_path: Path) -> None:
    output = OutputSpec(uri=str(tmp_path / "out"), samples_per_shard=10)
    ShardDatasink(output, run_id="r").write([_shard_rows(PASS_THROUGH)], SimpleNamespace(task_idx=0))
    layout = OutputLayout(output.uri)
    parquet = pq.read_table(layout.shard_file("parquet", 0))
    for name in PASS_THROUGH.column_names:
        assert parquet.schema.field(name).type == PASS_THROUGH.schema.field(name).type, name
    assert parquet.column("huge").to_pylist() == [2**64 - 1, 0]
    with tarfile.open(layout.shard_file("tar", 0)) as tar:
        samples = [json.load(io.BytesIO(tar.extractfile(m).read())) for m in tar if m.name.endswith(".json")]
    assert len(samples) == 2
    assert "generate_s" not in samples[0] and samples[0]["rec"] == {"k": 1}
    assert parquet.column("generate_s").to_pylist() == [0.5, 1.5]  # timings stay in the Parquet


def test_pack_and_unpack_keep_every_type_and_value() -> None:
    from pipelines.passthrough import PACKED_COLUMN, pack, unpack

    base = pa.table({"id": ["a", "b"], "prompt": ["p", "q"], "status": ["ok", "ok"], "note": ["x", None]})
    table = base
    for name in PASS_THROUGH.column_names:
        table = table.append_column(name, PASS_THROUGH.column(name))
    packed = pack(table)
    assert set(packed.column_names) == {"id", "prompt", "status", "note", PACKED_COLUMN}  # text stays as is
    # rows travel apart (another block order) and come back as the read types and values
    again = unpack(pa.concat_tables([packed.slice(1, 1), packed.slice(0, 1)]))
    for name in PASS_THROUGH.column_names:
        assert again.schema.field(name).type == PASS_THROUGH.schema.field(name).type, name
        assert str(again.column(name).to_pylist()) == str(PASS_THROUGH.column(name).to_pylist()[::-1]), name  # NaN


def test_packed_columns_of_conflicting_types_become_json_text() -> None:
    from pipelines.passthrough import pack, unpack

    first = pack(pa.table({"id": ["a"], "rank": pa.array([3], pa.int64())}))
    second = pack(pa.table({"id": ["b"], "rank": pa.array([[1, 2]], pa.list_(pa.int64()))}))
    joined = unpack(pa.concat_tables([first, second]))
    assert joined.column("rank").to_pylist() == ["3", "[1, 2]"]
    nulls_then_int = unpack(pa.concat_tables([pack(pa.table({"id": ["a"], "n": pa.array([None], pa.int64())})),
                                              pack(pa.table({"id": ["b"], "n": pa.array([2**62], pa.int64())}))]))
    assert nulls_then_int.column("n").type == pa.int64() and nulls_then_int.column("n").to_pylist() == [None, 2**62]


def test_declared_types_fill_in_nulls_and_never_reinterpret_text() -> None:
    from pipelines.column_types import decide, restore

    declared = decide([pa.schema([("note", pa.null()), ("code", pa.int64()), ("dec", pa.decimal128(10, 2)),
                                  ("style_strength", pa.string()), ("seed", pa.string())])], ())
    assert declared == pa.schema([("note", pa.string()), ("code", pa.int64()), ("dec", pa.decimal128(10, 2))])
    shard = pa.table({"note": pa.nulls(2), "code": pa.array(["007", "7"]),
                      "dec": pa.array([Decimal("1.5"), None], pa.decimal128(4, 1))})
    out = restore(shard, declared)
    assert out.schema.field("note").type == pa.string() and out.column("note").to_pylist() == [None, None]
    assert out.column("code").to_pylist() == ["007", "7"]  # text stays text
    assert out.schema.field("dec").type == pa.decimal128(10, 2) and out.column("dec").to_pylist()[0] == Decimal("1.5")
