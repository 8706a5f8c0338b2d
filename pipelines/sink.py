"""The shard sink: WebDataset tar + Parquet + stats per shard, committed atomically.

Built on Ray Data's ``Datasink`` API.  The plan repartitions rows into blocks
of exactly ``samples_per_shard`` rows, so each write task writes one shard,
numbered ``shard_offset + task index`` (a retried task rewrites the same
names from the same block, so retries cannot double rows).

Commit protocol (see ARCHITECTURE.md): every file is written with
:func:`pipelines.storage.write_once`, so it appears complete or not at all;
the tar, the Parquet and the shard's error records (``_errors/NNNNN.parquet``)
come first and ``NNNNN_stats.json`` last: a shard whose stats file exists is
committed.  Files of a shard without stats are removed by the next run.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from pipelines.faults import inject
from pipelines.spec import OutputSpec
from pipelines.storage import filesystem, join, write_once

__all__ = ["ERRORS_DIR", "ShardDatasink", "TMP_DIR", "shard_name"]

TMP_DIR = "_tmp"
# The run's errors table: one Parquet of error records per shard that has any.
ERRORS_DIR = "_errors"
# A fixed tar member time keeps reruns byte-identical.  An int: tarfile writes a PAX
# extended header (an extra 1 KiB block) for every member whose mtime is a float.
_TAR_MTIME = 0
# Member owner and mode as webdataset's TarWriter writes them.
_TAR_OWNER, _TAR_MODE = "bigdata", 0o444
_NOT_METADATA = ("image",)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _TAR_MTIME, _TAR_MODE
    info.uname = info.gname = _TAR_OWNER
    tar.addfile(info, io.BytesIO(data))


def shard_name(shard: int) -> str:
    """Return the zero-padded name of a shard (``00042``)."""
    return f"{shard:05d}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


class ShardDatasink(Datasink[dict]):
    """Write each write task's rows as one committed shard.

    Args:
        output: where and how to write.
        run_id: names this run's temporary folder.
        shard_offset: number of the first shard this run writes.
        storage_options: fsspec options for the output URI.
    """

    def __init__(
        self, output: OutputSpec, *, run_id: str, shard_offset: int = 0, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.output = output
        self.run_id = run_id
        self.shard_offset = shard_offset
        self.storage_options = storage_options or {}
        self.shard_stats: list[dict[str, Any]] = []

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    def get_name(self) -> str:
        return "ShardSink"

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, Any]:
        """Write and commit the shard for this task; return its stats."""
        started, start = _now(), time.perf_counter()
        tables = [t for t in (BlockAccessor.for_block(block).to_arrow() for block in blocks) if t.num_rows]
        if not tables:  # nothing left to write (e.g. a resumed run with everything done)
            return {"shard": None, "count": 0}
        table = pa.concat_tables(tables, promote_options="permissive")
        shard = self.shard_offset + ctx.task_idx
        name = shard_name(shard)
        fs, root = filesystem(self.output.uri, self.storage_options)
        staging = join(fs, root, TMP_DIR, self.run_id)
        table = self._with_keys(table, shard)
        metadata = table.drop_columns(list(_NOT_METADATA))
        errors = metadata.filter(pc.equal(metadata.column("status"), "error"))
        inject("sink:before_publish", shard=shard)
        with write_once(fs, join(fs, root, f"{name}.tar"), staging_dir=staging) as f:
            self._write_tar(f, table)
        with write_once(fs, join(fs, root, f"{name}.parquet"), staging_dir=staging) as f:
            pq.write_table(metadata, f)
        if errors.num_rows:
            fs.makedirs(join(fs, root, ERRORS_DIR), exist_ok=True)
            with write_once(fs, join(fs, root, ERRORS_DIR, f"{name}.parquet"), staging_dir=staging) as f:
                pq.write_table(errors, f)
        inject("sink:after_publish", shard=shard)
        stats = self._stats(table, shard=shard, run_id=self.run_id, started=started, seconds=time.perf_counter() - start)
        with write_once(fs, join(fs, root, f"{name}_stats.json"), staging_dir=staging) as f:
            f.write(json.dumps(stats, indent=2).encode())
        inject("sink:after_commit", shard=shard)
        return stats

    def on_write_complete(self, write_result: Any) -> None:
        self.shard_stats = [s for s in write_result.write_returns if s.get("shard") is not None]

    def _with_keys(self, table: pa.Table, shard: int) -> pa.Table:
        width = max(4, len(str(self.output.samples_per_shard - 1)))
        keys = [f"{shard_name(shard)}{i:0{width}d}" for i in range(table.num_rows)]
        table = table.append_column("key", pa.array(keys, pa.string()))
        return table.append_column("shard", pa.array([shard] * table.num_rows, pa.int64()))

    def _write_tar(self, f: Any, table: pa.Table) -> None:
        """Write the ok rows as WebDataset samples: ``<key>.<ext>``, ``<key>.json``, ``<key>.txt``.

        The standard library's tarfile, as ``webdataset.TarWriter`` uses it (same member
        names, order, owner and mode; the tests read the shards back with webdataset).
        Not TarWriter itself: importing webdataset imports torch, ~250 MiB more resident
        memory in every Ray worker that runs a write task (``bench.scaling``'s profile).
        """
        ext = self.output.image_format
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for row in table.to_pylist():
                if row["status"] != "ok":
                    continue
                metadata = {k: _json_value(v) for k, v in row.items() if k not in _NOT_METADATA}
                members = {ext: row["image"], "json": json.dumps(metadata, sort_keys=True).encode(),
                           "txt": row["prompt"].encode()}
                for suffix in sorted(members):  # webdataset's order: the sample's keys sorted
                    _add_member(tar, f"{row['key']}.{suffix}", members[suffix])

    @staticmethod
    def _stats(table: pa.Table, *, shard: int, run_id: str, started: str, seconds: float) -> dict[str, Any]:
        status = table.column("status").to_pylist()
        reasons = Counter(
            f"{stage}: {error.split(':', 1)[0]}"
            for stage, error, state in zip(table.column("stage").to_pylist(), table.column("error").to_pylist(), status)
            if state == "error"
        )
        return {
            "shard": shard,
            "run_id": run_id,
            "count": table.num_rows,
            "successes": status.count("ok"),
            "failures": status.count("error"),
            "filtered": status.count("filtered"),
            "failures_by_reason": dict(reasons),
            "start_time": started,
            "end_time": _now(),
            "duration_s": round(seconds, 3),
        }
