"""Duplicate ids: an id's first occurrence is its row, every later one an error record.

Occurrences are ordered by ``(source, source_row)`` (source names compared as text: the
order in which the input's files are listed). A later occurrence becomes ``status=error``,
``stage=duplicate``, ``error="duplicate id (first at <source>#<source_row>)"``, whatever
either row holds. The repeated ids are found by a Ray Data groupby on ``id`` over three
narrow columns (a hash shuffle, never a gather on the driver); the rows are joined with
that result only when the input repeats an id at all, so an input without duplicates keeps
its order and pays no join.

On resume a row is known by its resume key ``(id, dup_at)``: ``dup_at`` is ``""`` for an
id's own row and ``"<source>#<source_row>"`` for a duplicate record. :func:`with_resume_key`
derives it from the same columns on input rows and on committed rows, so a committed first
``r0`` does not hide the second ``r0``'s error record, and a committed duplicate record is
not done again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.schema import (
    DUPLICATE_STAGE,
    ERROR,
    ID,
    INTERNAL_PREFIX,
    SOURCE,
    SOURCE_COLUMNS,
    SOURCE_ROW,
    STAGE,
    STATUS,
    STATUS_COLUMNS,
    Status,
)

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "DUPLICATE_MARK", "KEY_COLUMNS", "RESUME_KEY", "RESUME_ON", "apply_marks", "duplicate_reason",
    "first_occurrences", "mark_duplicates", "with_resume_key",
]

RESUME_KEY = INTERNAL_PREFIX + "dup_at"
RESUME_ON: tuple[str, ...] = (ID, RESUME_KEY)
# A row's duplicate reason while it travels (``retry-errors`` carries a record's through ``prepare_rows``).
DUPLICATE_MARK = INTERNAL_PREFIX + "duplicate"
# What marking and the resume key read: enough to count the rows left to do without the rest of a row.
KEY_COLUMNS: tuple[str, ...] = (ID, *STATUS_COLUMNS, *SOURCE_COLUMNS)
_ORDER = INTERNAL_PREFIX + "order"
_FIRST = INTERNAL_PREFIX + "first"
_COUNT = INTERNAL_PREFIX + "count"
_SEP = "\x00"  # between source and row in an order key: no file name holds it
_ROW_DIGITS = 20  # source_row zero-padded: text order is row order


def duplicate_reason(first_at: str) -> str:
    """Return the ``error`` of a later occurrence whose id first occurs at ``first_at`` (``<source>#<row>``)."""
    return f"duplicate id (first at {first_at})"


def _join(*parts: pa.ChunkedArray, sep: str) -> pa.ChunkedArray:
    # One text type for every part: a join hands string columns back as large_string.
    texts = [pc.cast(part, pa.large_string()) for part in parts]
    return pc.binary_join_element_wise(*texts, pa.scalar(sep, pa.large_string()))


def _place(table: pa.Table) -> pa.ChunkedArray:
    """``<source>#<source_row>`` of every row."""
    return _join(table[SOURCE], table[SOURCE_ROW], sep="#")


def _order(table: pa.Table) -> pa.ChunkedArray:
    rows = pc.utf8_lpad(pc.cast(table[SOURCE_ROW], pa.large_string()), _ROW_DIGITS, "0")
    return _join(table[SOURCE], rows, sep=_SEP)


def _with_order(batch: pa.Table) -> pa.Table:
    return pa.table({ID: batch[ID], _ORDER: _order(batch)})


def _repeated(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.greater(batch[_COUNT], 1)).select([ID, _FIRST])


# Input bytes per hash partition of the duplicate-id pass.  Ray Data's default is 200 partitions
# whatever the input: on 2 cores its aggregators' start made the pass of a 96-row input take 13-19 s
# of a run's start-up against 2-3 s with one partition (``bench.pools``' timeline).
BYTES_PER_PARTITION = 256 * 2**20
MAX_PARTITIONS = 64


def id_partitions(input_bytes: int | None) -> int | None:
    """Return the hash partitions of the duplicate-id pass for an input of ``input_bytes`` (None: Ray's default).

    One per :data:`BYTES_PER_PARTITION` of input files, 1 to :data:`MAX_PARTITIONS`; an input of
    unknown size (a grid) keeps Ray Data's default.
    """
    if input_bytes is None:
        return None
    return max(1, min(MAX_PARTITIONS, -(-input_bytes // BYTES_PER_PARTITION)))


def first_occurrences(rows: ray.data.Dataset, *, input_bytes: int | None = None) -> ray.data.Dataset | None:
    """Return the ids that occur more than once in ``rows`` with the order key of their first occurrence.

    Materialized in Ray's object store (one row per repeated id), never on the driver.

    Args:
        input_bytes: the size of the input files the rows come from, which sizes the pass
            (:func:`id_partitions`); None for Ray Data's default.

    Returns:
        a dataset of ``(id, first)``, or None when no id repeats.
    """
    from ray.data.aggregate import Count, Min

    narrow = rows.select_columns([ID, *SOURCE_COLUMNS]).map_batches(_with_order, batch_format="pyarrow")
    grouped = narrow.groupby(ID, num_partitions=id_partitions(input_bytes))
    counts = grouped.aggregate(Count(alias_name=_COUNT), Min(_ORDER, alias_name=_FIRST))
    firsts = counts.map_batches(_repeated, batch_format="pyarrow").materialize()
    return firsts if firsts.count() else None


def apply_marks(batch: pa.Table) -> pa.Table:
    """Return ``batch`` with every row that carries a :data:`DUPLICATE_MARK` as its duplicate error record.

    The mark column is dropped; a batch without one is returned as it is.
    """
    if DUPLICATE_MARK not in batch.column_names:
        return batch
    mark = batch[DUPLICATE_MARK]
    marked = pc.fill_null(pc.not_equal(mark, ""), False)
    values = {STATUS: Status.ERROR.value, STAGE: DUPLICATE_STAGE, ERROR: mark}
    for name, value in values.items():
        index = batch.column_names.index(name)
        column = batch[name]
        new = pc.cast(value, column.type) if isinstance(value, pa.ChunkedArray) else pa.scalar(value, column.type)
        batch = batch.set_column(index, name, pc.if_else(marked, new, column))
    return batch.drop_columns([DUPLICATE_MARK])


def _first_at(order: str) -> str:
    """``<source>#<row>`` of an order key."""
    source, row = order.rsplit(_SEP, 1)
    return f"{source}#{int(row)}"


def _mark_later(batch: pa.Table) -> pa.Table:
    """Mark the rows that are not their id's first occurrence (``_FIRST`` from the join; null: id unique)."""
    firsts = batch[_FIRST].to_pylist()
    orders = _order(batch).to_pylist()
    reasons = [
        duplicate_reason(_first_at(first)) if first is not None and first != own else ""
        for first, own in zip(firsts, orders)
    ]
    batch = batch.drop_columns([_FIRST]).append_column(DUPLICATE_MARK, pa.array(reasons, pa.string()))
    return apply_marks(batch)


def mark_duplicates(rows: ray.data.Dataset, firsts: ray.data.Dataset | None) -> ray.data.Dataset:
    """Return ``rows`` with every later occurrence of a repeated id as its error record.

    Args:
        rows: canonical rows, or their :data:`KEY_COLUMNS`.
        firsts: :func:`first_occurrences` of the same rows; None leaves ``rows`` as they are.
    """
    if firsts is None:
        return rows
    # The rows' size is not known without a pass; the repeated ids grow with it, and this
    # join runs only on inputs that repeat ids.
    partitions = max(1, min(64, firsts.count() // 10_000 + 1))
    joined = rows.join(firsts, join_type="left_outer", num_partitions=partitions, on=(ID,))
    return joined.map_batches(_mark_later, batch_format="pyarrow")


def with_resume_key(batch: pa.Table) -> pa.Table:
    """Return ``batch`` (input or committed rows) with its :data:`RESUME_KEY` column appended."""
    duplicate = pc.fill_null(pc.equal(batch[STAGE], DUPLICATE_STAGE), False)
    key = pc.if_else(duplicate, pc.fill_null(_place(batch), ""), pa.scalar("", pa.large_string()))
    return batch.append_column(RESUME_KEY, key)
