"""The shard sink: WebDataset tar + Parquet + stats per shard, committed atomically.

Built on Ray Data's ``Datasink`` API.  The plan repartitions rows into blocks
of exactly ``samples_per_shard`` rows, so each write task writes one shard,
numbered ``shard_offset + task index`` (a retried task rewrites the same
names from the same block, so retries cannot double rows).

Commit protocol (see ARCHITECTURE.md): the shard's files are written in the order of
``pipelines.layout.SHARD_FILES``, each with :func:`pipelines.storage.write_once`, so it
appears complete or not at all; the stats file comes last and is the commit marker. It
lists each other file written with its size (``files``), so a later run can tell a whole
shard from a damaged one.
``SHARD_WRITERS`` holds one small writer per file: a new per-shard file is one entry
there and one in ``SHARD_FILES``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from pipelines import schema
from pipelines.column_types import restore
from pipelines.diversity import store_embeddings
from pipelines.faults import inject
from pipelines.layout import SHARD_FILES, OutputLayout, shard_name
from pipelines.passthrough import unpack
from pipelines.schema import json_value
from pipelines.spec import OutputSpec
from pipelines.storage import WriteConflict, create_new, read_tagged, write_once
from pipelines.utilization import shard_figures, without_columns

__all__ = ["SHARD_WRITERS", "ShardDatasink", "ShardTaken", "json_value"]

# A fixed tar member time keeps reruns byte-identical.  An int: tarfile writes a PAX
# extended header (an extra 1 KiB block) for every member whose mtime is a float.
_TAR_MTIME = 0
# Member owner and mode as webdataset's TarWriter writes them.
_TAR_OWNER, _TAR_MODE = "bigdata", 0o444


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _TAR_MTIME, _TAR_MODE
    info.uname = info.gname = _TAR_OWNER
    tar.addfile(info, io.BytesIO(data))


def _list_types(table: pa.Table) -> pa.Table:
    """Return ``table`` with the stages' list columns as ``list<item>`` of their declared item types
    (``schema.LIST_ITEM_TYPES``).

    A numpy task after the stage (image encoding) hands equal-length lists back to Ray as a
    tensor, which Arrow keeps as Ray's tensor extension (or its ``{data, shape}`` storage once
    blocks of both kinds are concatenated); an all-empty block reads as ``list<null>``.
    """
    for name, item in schema.LIST_ITEM_TYPES.items():
        if name in table.column_names:
            kind = pa.list_(pa.type_for_alias(item))
            column = table.column(name)
            if column.type != kind:
                column = pa.array([_as_list(value) for value in column.to_pylist()], kind)
            table = table.set_column(table.column_names.index(name), name, column)
    return table


def _as_list(value: Any) -> list | None:
    """One list cell as a Python list, whichever of Arrow's or Ray's forms it arrived in."""
    if isinstance(value, dict):  # a variable-shaped tensor's storage
        value = value["data"]
    return None if value is None else np.asarray(value).ravel().tolist()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


_NOT_IN_SAMPLE_JSON = schema.NOT_IN_SAMPLE_JSON


def _micro_batches(table: pa.Table) -> dict[str, dict[str, int]]:
    """Rows drawn at each micro-batch, by generate shape (``schema.shape_label``); {} without the column."""
    if schema.MICRO_BATCH not in table.column_names:
        return {}
    columns = [table.column(name).to_pylist() for name in (schema.WIDTH, schema.HEIGHT, schema.STEPS, schema.GUIDANCE)]
    counts: dict[str, Counter[str]] = {}
    for size, *shape in zip(table.column(schema.MICRO_BATCH).to_pylist(), *columns):
        if size:
            counts.setdefault(schema.shape_label(*shape), Counter())[str(size)] += 1
    return {label: dict(sizes) for label, sizes in counts.items()}


class ShardContent:
    """What the writers of one shard see: the rows (images included), their metadata, the stats.

    Attributes:
        shard: the shard number.
        table: every row of the shard with its ``key`` and ``shard`` columns.
        metadata: ``table`` without the image bytes.
        errors: the shard's error records (``metadata`` rows with status error).
        image_format: the tar members' image extension.
        stats: the shard's stats, filled in just before the stats file is written.
    """

    def __init__(self, shard: int, table: pa.Table, image_format: str) -> None:
        self.shard = shard
        self.table = table
        self.metadata = table.drop_columns(list(schema.TAR_ONLY_COLUMNS))
        self.errors = self.metadata.filter(pc.equal(self.metadata.column(schema.STATUS), schema.Status.ERROR.value))
        self.image_format = image_format
        self.stats: dict[str, Any] = {}


def _write_tar(f: Any, content: ShardContent) -> None:
    """Write the ok rows as WebDataset samples: ``<key>.<ext>``, ``<key>.json``, ``<key>.txt``.

    The standard library's tarfile, as ``webdataset.TarWriter`` uses it (same member
    names, order, owner and mode; the tests read the shards back with webdataset).
    Not TarWriter itself: importing webdataset imports torch, ~250 MiB more resident
    memory in every Ray worker that runs a write task (``bench.scaling``'s profile).
    """
    ext = content.image_format
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for row in content.table.to_pylist():
            if row[schema.STATUS] != schema.Status.OK:
                continue
            # Timings stay in the Parquet: a sample's JSON holds what the row is, so a rerun's
            # samples (and, in a fresh run, its tars) are byte-identical.
            metadata = {k: json_value(v) for k, v in row.items() if k not in _NOT_IN_SAMPLE_JSON}
            members = {ext: row[schema.IMAGE], "json": json.dumps(metadata, sort_keys=True).encode(),
                       "txt": row[schema.PROMPT].encode()}
            for suffix in sorted(members):  # webdataset's order: the sample's keys sorted
                _add_member(tar, f"{row[schema.KEY]}.{suffix}", members[suffix])


def _write_parquet(f: Any, content: ShardContent) -> None:
    pq.write_table(content.metadata, f)


def _write_errors(f: Any, content: ShardContent) -> None:
    pq.write_table(content.errors, f)


def _write_stats(f: Any, content: ShardContent) -> None:
    f.write(json.dumps(content.stats, indent=2).encode())


# One writer per ``SHARD_FILES`` kind: ``(write(file, content), needed(content))``.
Writer = tuple[Callable[[Any, ShardContent], None], Callable[[ShardContent], bool]]
_ALWAYS: Callable[[ShardContent], bool] = lambda content: True  # noqa: E731
SHARD_WRITERS: dict[str, Writer] = {
    "tar": (_write_tar, _ALWAYS),
    "parquet": (_write_parquet, _ALWAYS),
    "errors": (_write_errors, lambda content: content.errors.num_rows > 0),
    "stats": (_write_stats, _ALWAYS),
}
assert list(SHARD_WRITERS) == [shard_file.kind for shard_file in SHARD_FILES], "a writer per shard file, in order"


def _without_deferred(table: pa.Table) -> tuple[pa.Table | None, int]:
    """Return ``table`` without its ``deferred`` rows (None when none is left) and how many there were.

    A deferred row (the budget was spent before its first model step) goes to no shard and no
    errors table; a later run finds it in no shard and does it.
    """
    deferred = pc.equal(table.column(schema.STATUS), schema.Status.DEFERRED.value)
    count = pc.sum(deferred).as_py() or 0
    if count:
        table = table.filter(pc.invert(deferred))
    return (table if table.num_rows else None), count


class ShardTaken(RuntimeError):
    """Another run claimed or committed this shard number: nothing of it was overwritten."""


class ShardDatasink(Datasink[dict]):
    """Write each write task's rows as one committed shard.

    Args:
        output: where and how to write.
        run_id: names this run's temporary folder.
        shard_offset: number of the first shard this run writes.
        storage_options: fsspec options for the output URI.
        declared: the run's pass-through schema (``pipelines.column_types``); every shard is
            written with it.
    """

    def __init__(
        self, output: OutputSpec, *, run_id: str, shard_offset: int = 0,
        storage_options: dict[str, Any] | None = None, declared: pa.Schema | None = None,
    ) -> None:
        self.output = output
        self.run_id = run_id
        self.shard_offset = shard_offset
        self.storage_options = storage_options or {}
        self.declared = declared if declared is not None else pa.schema([])
        self.shard_stats: list[dict[str, Any]] = []
        self.deferred = 0  # rows the budget deferred (``actors.budget``): in no shard, a later run does them

    @property
    def supports_distributed_writes(self) -> bool:
        return True

    def get_name(self) -> str:
        return "ShardSink"

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, Any]:
        """Write and commit the shard for this task; return its stats."""
        started, start = _now(), time.perf_counter()
        tables = [_list_types(t) for t in (BlockAccessor.for_block(block).to_arrow() for block in blocks) if t.num_rows]
        whole = pa.concat_tables(tables, promote_options="permissive") if tables else None
        # the pools' timing (deferred rows were timed too), summed before the columns are dropped
        pools = shard_figures(whole) if whole is not None else {}
        table, deferred = _without_deferred(without_columns(whole)) if whole is not None else (None, 0)
        if table is None:  # nothing left to write (a resumed run with everything done, or only deferred rows)
            return {"shard": None, "count": 0, "deferred": deferred}
        shard = self.shard_offset + ctx.task_idx
        layout = OutputLayout(self.output.uri, self.storage_options)
        staging = layout.staging_dir(self.run_id)
        table = restore(unpack(table), self.declared)
        content = ShardContent(shard, self._with_keys(store_embeddings(table), shard), self.output.image_format)
        committed = self._claim(layout, shard)
        if committed is not None:  # this task, retried by Ray after its first attempt committed
            return committed
        inject("sink:before_publish", shard=shard)
        sizes: dict[str, int] = {}  # each file written: name relative to the root -> bytes
        for shard_file in SHARD_FILES:
            write, needed = SHARD_WRITERS[shard_file.kind]
            if shard_file is SHARD_FILES[-1]:  # the commit marker
                inject("sink:after_publish", shard=shard)
                content.stats = self._stats(
                    content.table, shard=shard, run_id=self.run_id, started=started, seconds=time.perf_counter() - start
                )
                content.stats["utilization"] = pools  # each pool's actors' seconds on these rows
                content.stats["deferred"] = deferred  # rows of this block left for a later run (budget spent)
                content.stats["files"] = dict(sizes)  # what a later run checks the shard against (layout.check_shards)
            if not needed(content):
                continue
            path = layout.shard_file(shard_file.kind, shard)
            if "/" in shard_file.pattern:
                layout.fs.makedirs(path.rsplit(layout.fs.sep, 1)[0], exist_ok=True)
            if shard_file is not SHARD_FILES[-1]:
                with write_once(layout.fs, path, staging_dir=staging) as f:
                    write(f, content)
                    sizes[shard_file.name(shard)] = f.tell()
                continue
            marker = io.BytesIO()
            write(marker, content)
            try:  # create-if-absent: a committed shard is never overwritten, whatever happened to the claim
                create_new(layout.fs, path, marker.getvalue(), staging_dir=staging)
            except WriteConflict:
                raise ShardTaken(f"shard {shard_name(shard)} of {self.output.uri} was committed by another run "
                                 "while this one wrote it") from None
        layout.fs.rm(layout.claim_file(shard))
        inject("sink:after_commit", shard=shard)
        return content.stats

    def _claim(self, layout: OutputLayout, shard: int) -> dict[str, Any] | None:
        """Claim ``shard``'s number for this run before any of its files is written.

        The claim (``layout.claim_file``) is created only if absent and names the run; a retried
        task of the same run finds its own claim (or, after a commit, its own stats) and goes on.

        Returns:
            the shard's stats when this run already committed it, else None (the number is ours).

        Raises:
            ShardTaken: another run claimed or committed the number (two runs writing one output).
        """
        path, staging = layout.claim_file(shard), layout.staging_dir(self.run_id)
        layout.fs.makedirs(path.rsplit(layout.fs.sep, 1)[0], exist_ok=True)
        try:
            create_new(layout.fs, path, json.dumps({"run_id": self.run_id}).encode(), staging_dir=staging)
        except WriteConflict:
            found = read_tagged(layout.fs, path)
            holder = json.loads(found[0])["run_id"] if found else "(claim just removed)"
            if holder != self.run_id:
                raise ShardTaken(f"shard {shard_name(shard)} of {self.output.uri} is being written by run {holder}; "
                                 "two runs write one output") from None
        marker = read_tagged(layout.fs, layout.shard_file("stats", shard))
        if marker is None:
            return None
        stats: dict[str, Any] = json.loads(marker[0])
        layout.fs.rm(path)
        if stats.get("run_id") == self.run_id:
            return stats
        raise ShardTaken(f"shard {shard_name(shard)} of {self.output.uri} was committed by run {stats.get('run_id')}; "
                         "two runs write one output")

    def on_write_complete(self, write_result: Any) -> None:
        self.shard_stats = [s for s in write_result.write_returns if s.get("shard") is not None]
        self.deferred = sum(int(s.get("deferred", 0)) for s in write_result.write_returns)

    def _with_keys(self, table: pa.Table, shard: int) -> pa.Table:
        width = max(4, len(str(self.output.samples_per_shard - 1)))
        keys = [f"{shard_name(shard)}{i:0{width}d}" for i in range(table.num_rows)]
        table = table.append_column(schema.KEY, pa.array(keys, pa.string()))
        return table.append_column(schema.SHARD, pa.array([shard] * table.num_rows, pa.int64()))

    @staticmethod
    def _stats(table: pa.Table, *, shard: int, run_id: str, started: str, seconds: float) -> dict[str, Any]:
        status = table.column(schema.STATUS).to_pylist()
        stages, errors = table.column(schema.STAGE).to_pylist(), table.column(schema.ERROR).to_pylist()
        reasons: Counter[str] = Counter()
        examples: dict[str, str] = {}  # one full message per reason code
        for stage, error, state in zip(stages, errors, status):
            if state == schema.Status.ERROR:
                code = schema.reason_code(stage, error)
                reasons[code] += 1
                examples.setdefault(code, f"{stage}: {error}"[:1000])
        scores = []
        if schema.CLIP_SCORE in table.column_names:
            values = table.column(schema.CLIP_SCORE).to_pylist()
            scores = [v for v, state in zip(values, status) if state == schema.Status.OK and v is not None and v == v]
        return {
            "shard": shard,
            "run_id": run_id,
            "count": table.num_rows,
            "successes": status.count(schema.Status.OK),
            "failures": status.count(schema.Status.ERROR),
            "filtered": status.count(schema.Status.FILTERED),
            "failures_by_reason": dict(reasons),
            "failure_examples": examples,
            "scored": len(scores),  # ok rows with a CLIP score, and their mean
            "clip_score_mean": round(sum(scores) / len(scores), 4) if scores else None,
            # busy seconds of each stage's actors on these rows (``pipelines.cost``)
            "busy_s": {stage.name: round(pc.sum(table.column(stage.seconds)).as_py() or 0.0, 6)
                       for stage in schema.STAGES if stage.seconds in table.column_names},
            "micro_batch": _micro_batches(table),
            "start_time": started,
            "end_time": _now(),
            "duration_s": round(seconds, 3),
        }
