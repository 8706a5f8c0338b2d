"""Pass-through columns travel around the model stages as Arrow bytes, so no value changes.

The model stages take rows as numpy arrays, and Arrow infers each column's type again when
they come back: a ``decimal128(10, 2)`` returned as ``decimal128(4, 2)``, a ``uint64`` with
a null as ``double`` (2**64 - 1 lost its last digits), a ragged ``list<string>`` as pickled
Python objects. So before the model stages :func:`pack` moves every pass-through column
that is not plain text into one internal column holding, per row, that row's values as an
Arrow IPC stream; the sink calls :func:`unpack` to put them back, types and values as read.
Text columns stay as they are: numpy holds them without loss, and most inputs have only
text pass-through columns, which then cost nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pyarrow as pa

from pipelines import schema

__all__ = ["PACKED_COLUMN", "pack", "unpack"]

PACKED_COLUMN = schema.INTERNAL_PREFIX + "passthrough"


def _packable(field: pa.Field, keep: set[str]) -> bool:
    if field.name in keep or field.name in schema.RESERVED_COLUMNS or schema.is_internal(field.name):
        return False
    return not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type))


def pack(batch: pa.Table, *, keep: Iterable[str] = ()) -> pa.Table:
    """Return ``batch`` with its non-text pass-through columns packed into :data:`PACKED_COLUMN`.

    Args:
        batch: canonical rows (``pipelines.rows.prepare_rows``).
        keep: more columns the stages read (a style stage's own column names).

    Returns:
        the same rows; each packed row holds a one-row Arrow IPC stream of those columns.
    """
    keep_set = set(keep) | set(schema.SOURCE_COLUMNS)
    names = [field.name for field in batch.schema if _packable(field, keep_set)]
    if not names:
        return batch
    values = batch.select(names)
    blobs = []
    for row in range(values.num_rows):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, values.schema) as writer:
            writer.write_table(values.slice(row, 1))
        blobs.append(sink.getvalue().to_pybytes())
    return batch.drop_columns(names).append_column(PACKED_COLUMN, pa.array(blobs, pa.binary()))


def unpack(table: pa.Table) -> pa.Table:
    """Return ``table`` with the packed columns back as columns (appended after the others).

    Rows packed from inputs whose types disagree (two files, two JSONL batches) are joined
    with Arrow's permissive promotion; a column whose types cannot be promoted is written as
    JSON text in this shard (``pipelines.schema.json_value``), so no value is lost and no
    shard fails.
    """
    if PACKED_COLUMN not in table.column_names:
        return table
    blobs = table.column(PACKED_COLUMN).to_pylist()
    table = table.drop_columns([PACKED_COLUMN])
    rows = [pa.ipc.open_stream(blob).read_all() if blob is not None else None for blob in blobs]
    present = [row for row in rows if row is not None]
    if not present:
        return table
    names = list(dict.fromkeys(name for row in present for name in row.column_names))
    columns = {name: _join_column(name, rows) for name in names}
    for name, column in columns.items():
        table = table.append_column(name, column)
    return table


def _join_column(name: str, rows: list[pa.Table | None]) -> pa.ChunkedArray | pa.Array:
    """One packed column over all rows (a row without it is null)."""
    pieces = [row.column(name) if row is not None and name in row.column_names else None for row in rows]
    types = [piece.type for piece in pieces if piece is not None]
    try:
        unified = pa.unify_schemas([pa.schema([(name, t)]) for t in types], promote_options="permissive")
        wanted = unified.field(name).type
        chunks: list[pa.Array] = []
        for piece in pieces:
            chunks += piece.cast(wanted).chunks if piece is not None else [pa.nulls(1, wanted)]
        return pa.chunked_array(chunks, wanted)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        texts = [
            None if piece is None or piece[0].as_py() is None
            else json.dumps(schema.json_value(piece[0].as_py()), ensure_ascii=False, sort_keys=True)
            for piece in pieces
        ]
        return pa.array(texts, pa.string())
