"""The output layout (pipelines.layout) and the sink's commit order, without Ray."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.sink as sink_module
from pipelines.layout import SHARD_FILES, OutputLayout, shard_name
from pipelines.sink import SHARD_WRITERS, ShardDatasink
from pipelines.spec import OutputSpec
from pipelines.watchdog import RunStalled, Watchdog


def _rows(n: int, *, errors: int = 0) -> pa.Table:
    status = ["error"] * errors + ["ok"] * (n - errors)
    return pa.table({
        "id": [f"r{i}" for i in range(n)],
        "prompt": [f"prompt {i}" for i in range(n)],
        "status": status,
        "stage": ["generate" if s == "error" else "" for s in status],
        "error": ["boom: it broke" if s == "error" else "" for s in status],
        "image": [b"\x89PNG fake" if s == "ok" else b"" for s in status],
    })


def test_names_are_zero_padded_and_one_per_kind(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    assert shard_name(42) == "00042" and shard_name(123456) == "123456"
    assert [p.rsplit("/", 1)[-1] for p in layout.shard_files(7)] == [
        "00007.tar", "00007.parquet", "00007.parquet", "00007_stats.json"]
    assert layout.shard_file("errors", 7).endswith("/_errors/00007.parquet")
    assert layout.run_record().endswith("/_run.json")
    assert layout.run_record("abc").endswith("/_runs/abc.json")
    assert SHARD_FILES[-1].kind == "stats", "the commit marker comes last"
    with pytest.raises(KeyError):
        layout.shard_file("nope", 0)


def test_committed_and_uncommitted_shards(tmp_path: Path) -> None:
    root = tmp_path / "out"
    (root / "_errors").mkdir(parents=True)
    for name in ("00000.tar", "00000.parquet", "00000_stats.json", "_errors/00000.parquet",
                 "00001.tar", "00001.parquet", "_errors/00001.parquet", "notes.txt", "12.tar"):
        (root / name).write_text("{}" if name.endswith(".json") else "x")
    layout = OutputLayout(str(root))
    assert layout.committed_shards() == [0]
    leftovers = sorted(path.split("/out/", 1)[1] for path in layout.uncommitted_files())
    assert leftovers == ["00001.parquet", "00001.tar", "_errors/00001.parquet"]  # never notes.txt or 12.tar
    assert layout.files("errors") == [layout.shard_file("errors", 0), layout.shard_file("errors", 1)]
    assert layout.files("parquet") == [layout.shard_file("parquet", 0), layout.shard_file("parquet", 1)]
    assert OutputLayout(str(tmp_path / "missing")).committed_shards() == []


def test_layout_on_s3(s3) -> None:
    s3.pipe("pixelmill/out/00003_stats.json", json.dumps({"shard": 3, "count": 2}).encode())
    s3.pipe("pixelmill/out/00004.tar", b"x")
    layout = OutputLayout("s3://pixelmill/out")
    assert layout.committed_shards() == [3]
    assert layout.read_stats(3)["count"] == 2
    assert layout.uncommitted_files() == ["pixelmill/out/00004.tar"]
    layout.write_json(layout.run_record("r1"), {"run_id": "r1"})
    assert layout.read_json(layout.run_record("r1")) == {"run_id": "r1"}
    assert layout.display("_errors") == "s3://pixelmill/out/_errors"


def test_sink_writes_every_shard_file_in_commit_order(tmp_path: Path, monkeypatch) -> None:
    written: list[str] = []
    original = sink_module.write_once

    def recording(fs, path, *, staging_dir):
        written.append(path.split("/out/", 1)[1])
        return original(fs, path, staging_dir=staging_dir)

    original_create = sink_module.create_new

    def recording_create(fs, path, data, *, staging_dir):  # the commit marker: created only if absent
        if "/claims/" not in path:
            written.append(path.split("/out/", 1)[1])
        return original_create(fs, path, data, staging_dir=staging_dir)

    monkeypatch.setattr(sink_module, "write_once", recording)
    monkeypatch.setattr(sink_module, "create_new", recording_create)
    output = OutputSpec(uri=str(tmp_path / "out"), samples_per_shard=10)
    sink = ShardDatasink(output, run_id="run1", shard_offset=3)
    stats = sink.write([_rows(4, errors=1)], SimpleNamespace(task_idx=2))
    assert written == ["00005.tar", "00005.parquet", "_errors/00005.parquet", "00005_stats.json"]
    assert list(SHARD_WRITERS) == [f.kind for f in SHARD_FILES]
    assert (stats["shard"], stats["count"], stats["successes"], stats["failures"]) == (5, 4, 3, 1)
    layout = OutputLayout(output.uri)
    assert layout.committed_shards() == [5] and layout.read_stats(5) == stats
    assert pq.read_table(layout.shard_file("errors", 5)).column("id").to_pylist() == ["r0"]
    # no errors, no error file
    written.clear()
    sink.write([_rows(2)], SimpleNamespace(task_idx=3))
    assert written == ["00006.tar", "00006.parquet", "00006_stats.json"]


def test_a_failing_writer_leaves_the_shard_uncommitted(tmp_path: Path, monkeypatch) -> None:
    def broken(f, content):
        raise OSError("disk full")

    monkeypatch.setitem(SHARD_WRITERS, "parquet", (broken, SHARD_WRITERS["parquet"][1]))
    output = OutputSpec(uri=str(tmp_path / "out"), samples_per_shard=10)
    with pytest.raises(OSError, match="disk full"):
        ShardDatasink(output, run_id="run1").write([_rows(3)], SimpleNamespace(task_idx=0))
    layout = OutputLayout(output.uri)
    assert layout.committed_shards() == []
    assert [p.rsplit("/", 1)[-1] for p in layout.uncommitted_files()] == ["00000.tar"]


def test_watchdog_stops_a_run_without_progress() -> None:
    with pytest.raises(RunStalled, match="no shard committed"):
        with Watchdog(lambda: 0, timeout_s=0.6, grace_s=30):
            for _ in range(100):  # the interrupt lands between bytecodes, not inside one long sleep
                time.sleep(0.1)


def test_watchdog_lets_a_progressing_run_finish() -> None:
    counter = {"n": 0}
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.1):
            counter["n"] += 1

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        with Watchdog(lambda: counter["n"], timeout_s=0.6, grace_s=30) as dog:
            time.sleep(1.5)
        assert not dog.fired
    finally:
        stop.set()
        ticker.join()


def test_only_pixelmill_files_are_owned(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    owned = ["00000.tar", "00000.parquet", "_errors/00000.parquet", "00000_stats.json", "_run.json",
             "_runs/20260101T000000-abc.json", "_retry.json", "_lease.json", "report.html", "_tmp/run/x.tar"]
    foreign = ["notes.txt", "sub/data.csv", "12.tar", "_errors/notes.txt", "00000.tar.bak", "_runs/a/b.json",
               "prompts.jsonl"]
    assert all(layout.is_owned(layout.path(name)) for name in owned)
    assert not any(layout.is_owned(layout.path(name)) for name in foreign)


def test_the_equation_names_every_term() -> None:
    from pipelines.accounting import EQUATION_TERMS, RunSummary

    summary = RunSummary(run_id="r", output="o", mode="resume", input_rows=10, images=6, errors=2, filtered=1,
                         skipped=1)
    summary.balance()
    assert summary.balanced
    assert summary.equation == "6 images + 2 errors + 1 filtered + 1 skipped = 10 == 10 input rows"
    summary.images -= 1
    summary.balance()
    assert not summary.balanced and "9 != 10" in summary.equation
    summary.deferred = 1  # a budgeted run's term is named when it counts rows
    summary.balance()
    assert summary.balanced and summary.equation.endswith("+ 1 skipped + 1 deferred = 10 == 10 input rows")
    assert EQUATION_TERMS[0] == "images"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_overwrite_removes_only_what_pixelmill_wrote(where: str, tmp_path: Path, request) -> None:
    from pipelines.resume import prepare_output

    if where == "s3":
        fs = request.getfixturevalue("s3")
        uri, root = "s3://pixelmill/out", "pixelmill/out"
    else:
        from fsspec.implementations.local import LocalFileSystem

        fs, uri = LocalFileSystem(auto_mkdir=True), str(tmp_path / "out")
        root = uri
    names = ["00000.tar", "00000.parquet", "00000_stats.json", "_errors/00000.parquet", "_run.json",
             "_runs/r1.json", "report.html", "notes.txt", "sub/data.csv", "prompts.jsonl", "_lease.json"]
    for name in names:
        fs.pipe(f"{root}/{name}", b"x")
    plan = prepare_output(OutputLayout(uri), "overwrite")
    assert (plan.shard_offset, plan.done_parquet) == (0, [])
    fs.invalidate_cache()
    left = sorted(path.split("/out/", 1)[1] for path in fs.find(root))
    # the user's files, and the lease of the run that is overwriting (its own)
    assert left == ["_lease.json", "notes.txt", "prompts.jsonl", "sub/data.csv"]
