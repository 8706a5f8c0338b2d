"""Start-up against history: resume, append and report on an output with N committed shards.

``python -m bench.history [N ...]`` (default 1000 10000; 100000 is not in ``python -m bench``'s
list: ``python -m bench.history 1000 10000 100000``). For each N it writes an output of N
committed shards directly (a stats file, a 4-row Parquet and a 2-image tar each, plus one
run record and one run index per 1,000 shards, as a history of 1,000-shard runs leaves),
on local disk and in an in-process moto S3 server (filled through moto's backend, not HTTP:
300,000 PUTs would take minutes), and measures what pixelmill does before its first model
batch, through s3fs over HTTP:

- ``resume``: one listing and check of the shards before the lease (the committed schema, and
  ``made_from``'s run records), ``prepare_output`` under the lease (clean, damage check, the
  plan) and reading the resume keys the plan names (on the driver with pyarrow here; a run
  reads the same files with Ray).
- ``append``: the committed schema and ``prepare_output`` (no keys).
- ``report``: ``pixelmill report`` (``build_report``: counts, contact sheet, ``report.html``).

Requests are counted per operation (S3: botocore's ``before-call`` events on the s3fs client;
local: calls of the filesystem's methods). ``old GETs`` is what the per-shard way reads:
resume one stats file and one Parquet per shard, append one stats file per shard, the report
one stats file and one Parquet per shard. Times are printed, never asserted.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import BUCKET, _free_port, report
from pipelines.dedupe import RESUME_KEY
from pipelines.layout import INDEX_COLUMNS, OutputLayout
from pipelines.schema import ID

SHARDS_PER_RUN = 1000
ROWS_PER_SHARD = 4
_FS_METHODS = ("find", "glob", "ls", "cat", "cat_file", "open", "info", "exists", "isdir", "rm", "makedirs")


def _shard_files(shard: int, run_id: str) -> dict[str, bytes]:
    """Return the files of one committed shard, by name relative to the root (stats last)."""
    name = f"{shard:05d}"
    ids = [f"s{shard}r{i}" for i in range(ROWS_PER_SHARD)]
    keys = [f"{name}{i:04d}" for i in range(ROWS_PER_SHARD)]
    table = pa.table({"id": ids, "key": keys, "status": ["ok"] * ROWS_PER_SHARD, "stage": [""] * ROWS_PER_SHARD,
                      "source": ["in.jsonl"] * ROWS_PER_SHARD, "source_row": list(range(ROWS_PER_SHARD)),
                      "prompt": [f"prompt {i}" for i in ids], "shard": [shard] * ROWS_PER_SHARD})
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        for key in keys[:2]:
            member = tarfile.TarInfo(f"{key}.txt")
            member.size = 2
            archive.addfile(member, io.BytesIO(b"hi"))
    files = {f"{name}.tar": tar.getvalue(), f"{name}.parquet": parquet.getvalue()}
    stats = {"shard": shard, "run_id": run_id, "count": ROWS_PER_SHARD, "successes": ROWS_PER_SHARD, "failures": 0,
             "filtered": 0, "duration_s": 0.1, "files": {n: len(b) for n, b in files.items()}}
    files[f"{name}_stats.json"] = json.dumps(stats, indent=2).encode()
    return files


def _run_files(run: int, shards: range, versions: dict[str, str | None]) -> dict[str, bytes]:
    """Return a run's record and index (``pipelines.history``'s two files) for ``shards``."""
    run_id = f"20260101T{run:06d}-bench"
    stats = {shard: _shard_files(shard, run_id)[f"{shard:05d}_stats.json"] for shard in shards}
    index = pa.table(dict(zip(INDEX_COLUMNS, [
        pa.array(list(shards), pa.int64()), pa.array([s.decode() for s in stats.values()], pa.string()),
        pa.array([len(s) for s in stats.values()], pa.int64()),
        pa.array([versions.get(f"{shard:05d}_stats.json") for shard in shards], pa.string())])))
    ids = [f"s{shard}r{i}" for shard in shards for i in range(ROWS_PER_SHARD)]
    keys = pa.table({ID: ids, RESUME_KEY: [""] * len(ids),
                     "shard": pa.array([s for s in shards for _ in range(ROWS_PER_SHARD)], pa.int64())})
    out = {}
    for name, table in ((f"_runs/{run_id}.shards.parquet", index), (f"_runs/{run_id}.keys.parquet", keys)):
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        out[name] = buffer.getvalue()
    rows = len(shards) * ROWS_PER_SHARD
    out[f"_runs/{run_id}.json"] = json.dumps({
        "run_id": run_id, "started": f"2026-01-01T00:00:{run % 60:02d}", "mode": "resume", "input_rows": rows,
        "skipped": 0, "images": rows, "errors": 0, "filtered": 0, "balanced": True,
        "shards": [f"{s:05d}" for s in shards]}).encode()
    return out


def populate(n: int, put: Callable[[str, bytes], None], version: Callable[[str], str | None]) -> None:
    """Write ``n`` committed shards with ``put(name, bytes)``, then one index per ``SHARDS_PER_RUN`` shards."""
    for shard in range(n):
        for name, data in _shard_files(shard, f"20260101T{shard // SHARDS_PER_RUN:06d}-bench").items():
            put(name, data)
    for run, start in enumerate(range(0, n, SHARDS_PER_RUN)):
        shards = range(start, min(n, start + SHARDS_PER_RUN))
        versions = {f"{s:05d}_stats.json": version(f"{s:05d}_stats.json") for s in shards}
        for name, data in _run_files(run, shards, versions).items():
            put(name, data)


@contextmanager
def counting(layout: OutputLayout) -> Iterator[Counter]:
    """Count the storage requests made through ``layout.fs`` while the block runs."""
    counts: Counter = Counter()
    fs = layout.fs
    if hasattr(fs, "s3"):
        fs.connect() if getattr(fs, "_s3", None) is None else None  # noqa: B018 - the client the hooks go on

        def hook(model: Any, **_: Any) -> None:
            counts[model.name] += 1

        fs.s3.meta.events.register("before-call.s3", hook)
        try:
            yield counts
        finally:
            fs.s3.meta.events.unregister("before-call.s3", hook)
        return
    saved = {name: getattr(fs, name) for name in _FS_METHODS}
    depth = [0]  # count the outermost call only: ``find`` calls ``info`` inside

    def wrap(name: str, method: Callable) -> Callable:
        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[name] += depth[0] == 0
            depth[0] += 1
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1
        return counted

    for name, method in saved.items():
        setattr(fs, name, wrap(name, method))
    try:
        yield counts
    finally:
        for name in saved:
            delattr(fs, name)


def resume_startup(layout: OutputLayout) -> int:
    """Run what a resume does before its first batch on the output's side; return the keys found."""
    from pipelines.resume import prepare_output
    from pipelines.runner import committed_schema

    check = layout.check_shards()  # run_job's one listing before the lease
    committed_schema(layout, check)
    layout.run_records()
    plan = prepare_output(layout, "resume")
    keys = sum(pq.read_table(path, filesystem=layout.fs, columns=["id"]).num_rows
               for path in [*plan.done_keys, *plan.done_parquet])
    return keys


def append_startup(layout: OutputLayout) -> None:
    """Run what an append does before its first batch on the output's side."""
    from pipelines.resume import prepare_output
    from pipelines.runner import committed_schema

    committed_schema(layout)
    prepare_output(layout, "append")


def measure(backend: str, uri: str, n: int, storage_options: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one row per measured start-up on the populated output at ``uri``."""
    from pipelines.report import build_report

    rows = []
    old = {"resume": 2 * n, "append": n, "report": 2 * n}
    steps: dict[str, Callable[[OutputLayout], Any]] = {
        "resume": resume_startup, "append": append_startup,
        "report": lambda layout: build_report(uri, storage_options, sample_size=48)}
    for name, step in steps.items():
        layout = OutputLayout(uri, storage_options)
        with counting(layout) as counts:
            start = time.perf_counter()
            result = step(layout)
            seconds = time.perf_counter() - start
        if name == "resume":
            assert result == n * ROWS_PER_SHARD, f"resume found {result} keys, wanted {n * ROWS_PER_SHARD}"
        rows.append({"backend": backend, "shards": n, "step": name, "seconds": round(seconds, 2),
                     "requests": sum(counts.values()), "old GETs": old[name],
                     "by op": " ".join(f"{op}={c}" for op, c in sorted(counts.items()))})
    return rows


def local_case(n: int) -> list[dict[str, Any]]:
    """Populate ``n`` shards in a temporary folder and measure there."""
    with tempfile.TemporaryDirectory() as folder:
        root = os.path.join(folder, "out")

        def put(name: str, data: bytes) -> None:
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(data)

        populate(n, put, lambda name: str(os.stat(os.path.join(root, name)).st_mtime))
        return measure("local", root, n, {})


def s3_case(n: int, endpoint: str) -> list[dict[str, Any]]:
    """Populate ``n`` shards through moto's backend (in this process) and measure over HTTP with s3fs."""
    import requests
    from moto.s3.models import s3_backends

    requests.post(f"{endpoint}/moto-api/reset", timeout=30).raise_for_status()
    backend = s3_backends["123456789012"]["global"]
    backend.create_bucket(BUCKET, "us-east-1")
    prefix = f"out{n}/"

    def put(name: str, data: bytes) -> None:
        backend.put_object(BUCKET, prefix + name, data)

    def etag(name: str) -> str | None:
        key = backend.get_object(BUCKET, prefix + name)
        return None if key is None else key.etag

    populate(n, put, etag)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return measure("moto", f"s3://{BUCKET}/{prefix.rstrip('/')}", n, {"client_kwargs": {"endpoint_url": endpoint}})


def main(sizes: list[int], backends: tuple[str, ...] = ("local", "moto")) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    import pipelines.report
    import pipelines.runner  # noqa: F401 - imported before the clock starts

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            for backend in backends:
                measured = local_case(n) if backend == "local" else s3_case(n, f"http://127.0.0.1:{port}")
                for row in measured:  # as they come: the 100k case takes minutes
                    print(json.dumps(row), flush=True)
                rows += measured
    finally:
        server.stop()
    ratios = {}
    for row in rows:
        if row["shards"] == max(sizes) and row["step"] != "report":
            fewer = row["old GETs"] / max(1, row["requests"])
            ratios[f"{row['backend']} {row['step']} at {row['shards']} shards: old GETs / requests"] = {
                "value": fewer, "target": ">= 10", "met": fewer >= 10}
    report("history", rows, ratios, extra={"shards_per_run": SHARDS_PER_RUN, "rows_per_shard": ROWS_PER_SHARD})


if __name__ == "__main__":
    # python -m bench.history [N ...] [local|moto ...]: sizes, and which storage (default both)
    args = sys.argv[1:]
    chosen = tuple(arg for arg in args if arg in ("local", "moto"))
    main([int(arg) for arg in args if arg.isdigit()] or [1000, 10000], chosen or ("local", "moto"))
