"""Committed shards written straight through the real sink, without Ray: what the layout, damage and
run-index tests start from."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa

from pipelines.layout import OutputLayout
from pipelines.sink import ShardDatasink
from pipelines.spec import OutputSpec


def shard_rows(ids: list[str], *, errors: int = 0) -> pa.Table:
    """Return finished rows as the sink receives them: the first ``errors`` rows are error records."""
    status = ["error"] * errors + ["ok"] * (len(ids) - errors)
    return pa.table({
        "id": ids,
        "prompt": [f"prompt {i}" for i in ids],
        "status": status,
        "stage": ["generate" if s == "error" else "" for s in status],
        "error": ["boom: it broke" if s == "error" else "" for s in status],
        "source": ["in.jsonl"] * len(ids),
        "source_row": list(range(len(ids))),
        "image": [b"\x89PNG fake " + i.encode() if s == "ok" else b"" for i, s in zip(ids, status)],
    })


def commit_shards(uri: str, shards: range, *, run_id: str = "run1", errors: int = 0) -> OutputLayout:
    """Commit ``shards`` (3 rows each, ids ``s<shard>r<i>``) with the real sink as run ``run_id``; return the layout."""
    sink = ShardDatasink(OutputSpec(uri=uri, samples_per_shard=3), run_id=run_id)
    for shard in shards:
        sink.write([shard_rows([f"s{shard}r{i}" for i in range(3)], errors=errors)], SimpleNamespace(task_idx=shard))
    return OutputLayout(uri)
