"""Messy CSV and Parquet inputs on S3 (moto), end to end: each row's fate (issue 15)."""

from __future__ import annotations

import io
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output


def _job(input_uri: str, output_uri: str, model_cache: str):
    raw = {"input": {"uri": input_uri}, "output": {"uri": output_uri, "samples_per_shard": 3, "report": False},
           "model": {"cache_dir": model_cache}, "score": None, "defaults": {"width": 32, "height": 32, "steps": 1}}
    return load_spec(raw=raw)


def test_messy_csv_on_s3(ray_session, s3, model_cache: str) -> None:
    # text ids that look like numbers, a quoted multi-line pass-through value, a bad seed,
    # a seed past 2**63, a width given with spaces, and a 0-byte file next to it
    csv = (
        'id,prompt,seed,width,notes\n'
        '007,a red circle,1,32,"line one\nline two"\n'
        '7,a blue square,12x,32,plain\n'
        '0042,a green star,9223372036854775808,32,\n'
        '42,a white cross,3, 32 ,"a, b"\n'
    )
    s3.pipe("pixelmill/messy/csv/a.csv", csv.encode())
    s3.pipe("pixelmill/messy/csv/empty.csv", b"")
    summary = run_job(_job("s3://pixelmill/messy/csv/", "s3://pixelmill/messy/csv-out", model_cache))
    assert summary.balanced and (summary.input_rows, summary.images, summary.errors) == (4, 2, 2), summary.equation
    out = read_output("s3://pixelmill/messy/csv-out")
    check_exactly_once(out, ["007", "7", "0042", "42"])
    rows = {row["id"]: row for row in out["rows"]}
    assert rows["007"]["status"] == "ok" and rows["007"]["notes"] == "line one\nline two"
    assert rows["7"]["status"] == "error" and "seed" in rows["7"]["error"]
    assert rows["0042"]["status"] == "error" and "2**63" in rows["0042"]["error"]
    assert rows["42"]["status"] == "ok" and rows["42"]["width"] == 32 and rows["42"]["notes"] == "a, b"


def test_messy_parquet_on_s3(ray_session, s3, model_cache: str) -> None:
    table = pa.table({
        "id": ["a", "b", "c"],
        "prompt": ["a red circle", "a blue square", "a green star"],
        "seed": pa.array([2**64 - 1, 5, None], pa.uint64()),
        "price": pa.array([Decimal("9.99"), None, Decimal("0.10")], pa.decimal128(12, 2)),
        "big": pa.array([2**64 - 1, None, 1], pa.uint64()),
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    s3.pipe("pixelmill/messy/pq/p.parquet", buffer.getvalue())
    summary = run_job(_job("s3://pixelmill/messy/pq/", "s3://pixelmill/messy/pq-out", model_cache))
    assert summary.balanced and (summary.images, summary.errors) == (2, 1), summary.equation
    out = read_output("s3://pixelmill/messy/pq-out")
    check_exactly_once(out, ["a", "b", "c"])
    rows = {row["id"]: row for row in out["rows"]}
    assert rows["a"]["status"] == "error" and "2**63" in rows["a"]["error"]
    assert rows["b"]["seed"] == 5 and rows["a"]["big"] == 2**64 - 1 and rows["b"]["big"] is None
    assert rows["c"]["price"] == Decimal("0.10")
    samples = {s["json"]["id"]: s["json"] for s in out["samples"]}
    assert samples["c"]["price"] == "0.10" and samples["c"]["big"] == 1
