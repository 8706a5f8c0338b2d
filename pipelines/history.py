"""The run index: what a finished run committed, in two files per run, so start-up grows with runs, not shards.

When a run finishes (``pipelines.runner.finish_run``) it writes, next to its record:

- ``_runs/<run id>.keys.parquet``: the resume keys (``pipelines.dedupe.RESUME_ON``) of every
  row of its committed shards, with the shard number; resume's anti-join reads these files
  instead of one Parquet per shard (``pipelines.resume.done_keys``).
- ``_runs/<run id>.shards.parquet``, last: each of its shards' stats file as it stands (text,
  size, version from one ``info`` per file). ``OutputLayout.check_shards`` reads these
  instead of one stats file per shard, as long as a shard's stats file is listed with the
  recorded size and version; the index is a cache and never decides alone.

A run killed before its index is written leaves shards no index covers: their stats files
and Parquets are read one by one, as before the index existed (and so are the shards of
outputs written before it). A shard rewritten in place (``pipelines.retry.supersede``)
has a new stats file (another version, usually another size), so its index entry no longer
applies and its own files are read.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.dedupe import RESUME_ON, with_resume_key
from pipelines.layout import INDEX_COLUMNS, OutputLayout, file_version
from pipelines.schema import ID, SHARD, SOURCE_COLUMNS, STAGE
from pipelines.storage import write_once

__all__ = ["KEY_READ_COLUMNS", "shard_keys", "write_index"]

KEY_READ_COLUMNS: tuple[str, ...] = (ID, STAGE, *SOURCE_COLUMNS)  # what a shard's resume keys are made of
_THREADS = 16  # concurrent per-shard requests when a run writes its index (object stores: latency-bound)


def shard_keys(layout: OutputLayout, shard: int) -> pa.Table:
    """Return the resume keys of one committed shard's rows, with a ``shard`` column.

    Raises:
        FileNotFoundError: the shard has no Parquet.
    """
    with layout.fs.open(layout.shard_file("parquet", shard), "rb") as handle:
        names = set(pq.read_schema(handle).names)
        handle.seek(0)
        table = pq.read_table(handle, columns=[c for c in KEY_READ_COLUMNS if c in names])
    for column in KEY_READ_COLUMNS:  # an output written without source columns has no duplicate records
        if column not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, pa.string()))
    keys = with_resume_key(table).select(list(RESUME_ON))
    return keys.append_column(SHARD, pa.array([shard] * keys.num_rows, pa.int64()))


def write_index(layout: OutputLayout, run_id: str, shards: list[int]) -> None:
    """Write the run's keys file, then its index of ``shards`` (the shards it committed); nothing without shards.

    Reads each of those shards' stats file, ``info`` and key columns (this run's work only).

    Raises:
        OSError: a file of a shard could not be read, or the index could not be written.
    """
    if not shards:
        return
    shards = sorted(shards)
    with ThreadPoolExecutor(_THREADS) as pool:
        keys = list(pool.map(lambda shard: shard_keys(layout, shard), shards))
        infos = list(pool.map(lambda shard: layout.fs.info(layout.shard_file("stats", shard)), shards))
    contents = layout.fs.cat([layout.shard_file("stats", shard) for shard in shards])
    index = pa.table(dict(zip(INDEX_COLUMNS, [
        pa.array(shards, pa.int64()),
        pa.array([contents[layout.shard_file("stats", shard)].decode() for shard in shards], pa.string()),
        pa.array([int(info["size"]) for info in infos], pa.int64()),
        pa.array([file_version(info) for info in infos], pa.string()),
    ])))
    _write_parquet(layout, layout.run_keys(run_id), pa.concat_tables(keys))
    _write_parquet(layout, layout.run_index(run_id), index)  # last: the run counts once its index is there


def _write_parquet(layout: OutputLayout, path: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    layout.fs.makedirs(path.rsplit(layout.fs.sep, 1)[0], exist_ok=True)
    with write_once(layout.fs, path, staging_dir=layout.staging_dir()) as f:
        f.write(buffer.getvalue())

