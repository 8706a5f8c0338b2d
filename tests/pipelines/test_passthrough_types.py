"""Every Arrow type a Parquet input can hold passes through a real run (issue 15, kind 6)."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output

PASS_THROUGH = {
    "dec": pa.array([Decimal("12.30"), None, Decimal("-0.01")], pa.decimal128(10, 2)),
    "tags": pa.array([["a", "b"], [], None], pa.list_(pa.string())),
    "at": pa.array([dt.time(12, 30, 1, 5), None, dt.time(0, 0)], pa.time64("us")),
    "rec": pa.array([{"k": 1}, {"k": None}, None], pa.struct([("k", pa.int64())])),
    "blob": pa.array([b"\x00\xff", b"", None], pa.binary()),
    "huge": pa.array([2**64 - 1, 0, None], pa.uint64()),
    "day": pa.array([dt.date(2026, 11, 30), None, dt.date(1970, 1, 1)], pa.date32()),
}


def test_every_parquet_type_passes_through_a_run(ray_session, tmp_path: Path, model_cache: str) -> None:
    table = pa.table({"id": ["a", "b", "c"], "prompt": ["a red circle", "a blue square", "a green star"],
                      **PASS_THROUGH})
    source = tmp_path / "in" / "p.parquet"
    source.parent.mkdir()
    pq.write_table(table, source)
    raw = {"input": {"uri": str(source)}, "output": {"uri": str(tmp_path / "out"), "samples_per_shard": 2},
           "model": {"cache_dir": model_cache}, "score": None, "defaults": {"width": 32, "height": 32, "steps": 1}}
    summary = run_job(load_spec(raw=raw))
    assert summary.balanced and summary.images == 3, summary.equation
    out = read_output(str(tmp_path / "out"))
    check_exactly_once(out, ["a", "b", "c"])
    written = pq.read_table(sorted((tmp_path / "out").glob("*.parquet"))[0])
    for name, column in PASS_THROUGH.items():
        assert written.schema.field(name).type == column.type, (name, written.schema.field(name).type)
    rows = {row["id"]: row for row in out["rows"]}
    for i, row_id in enumerate("abc"):
        for name, column in PASS_THROUGH.items():
            assert rows[row_id][name] == column[i].as_py(), (row_id, name)
    samples = {s["json"]["id"]: s["json"] for s in out["samples"]}
    assert samples["a"]["dec"] == "12.30" and samples["a"]["huge"] == 2**64 - 1
    assert samples["a"]["blob"] == {"base64": "AP8="} and samples["a"]["tags"] == ["a", "b"]
    assert samples["b"]["rec"] == {"k": None} and samples["c"]["rec"] is None
    assert hashlib.sha256(out["samples"][0]["image_bytes"]).hexdigest() == out["samples"][0]["json"]["sha256"]
