"""One Arrow type per pass-through column for a whole output (the pass-through type policy).

Every shard of an output has the same schema, so ``pyarrow.dataset``, ``datasets`` and
any Parquet reader read the output as one table. The rules (README, "One schema per output"):

1. **Decided before any work, from the whole input.** The driver takes each pass-through
   column's type from every input file: a Parquet file's footer, text for every CSV
   column, and for JSONL (which declares no types) a reading of every file, as Spark's
   JSON schema inference does. A column null in every row is text.
2. **Where files disagree, the type that holds both exactly** (:func:`unify`): null gives
   way to any type; integers of one signedness widen; an unsigned integer goes into a
   wider signed one; integers and floats give ``double``; floats widen; text and binary
   go large; decimals get the integer digits and the scale of both. Any other difference
   (int and text, two list types, two timestamp units, ...) makes the column **JSON
   text**: every value of it, in every shard, is ``json.dumps`` of its sample-JSON value
   (``pipelines.schema.json_value``), so ``3`` is ``"3"`` and ``"third"`` is ``"\\"third\\""``.
   Such a column's field carries the metadata :data:`JSON_TEXT`.
3. **A later run on the same output (resume, append, retry-errors) keeps its types**: the
   committed shards' schema wins. A value that fits only as text goes into a text column
   as its JSON text; a value that does not fit at all (text into an ``int64`` column, an
   integer beyond the column's range) makes its row an error record that says why. A
   column the committed shards do not have stops the run before any work.

The readers put values into these types (:func:`conform`), so a value that cannot be
stored is one row's error before any model runs; the sink casts back what the numpy-based
stages widened or narrowed (:func:`restore`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from pipelines import schema

__all__ = [
    "JSON_TEXT", "conform", "decide", "for_run", "is_json_text", "json_text_field",
    "passthrough_names", "restore", "to_column", "unify", "unify_fields",
]

# Field metadata marking a column stored as JSON text (rule 2).
JSON_TEXT = {b"pixelmill.encoding": b"json"}
_DECIMAL_DIGITS = {pa.types.is_decimal128: 38, pa.types.is_decimal256: 76}


def is_json_text(field: pa.Field) -> bool:
    """Whether a column holds JSON text (rule 2), from its field metadata."""
    return bool(field.metadata) and field.metadata.get(b"pixelmill.encoding") == b"json"


def json_text_field(name: str) -> pa.Field:
    """Return the field of a column stored as JSON text."""
    return pa.field(name, pa.string(), metadata=JSON_TEXT)


def _int_bits(kind: pa.DataType) -> int:
    return int(kind.bit_width)


def _wider_int(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    signed = pa.types.is_signed_integer
    if signed(a) == signed(b):
        return a if _int_bits(a) >= _int_bits(b) else b
    unsigned, signed_type = (a, b) if signed(b) else (b, a)
    bits = max(_int_bits(signed_type), 2 * _int_bits(unsigned))
    return {8: pa.int8(), 16: pa.int16(), 32: pa.int32(), 64: pa.int64()}.get(bits)


def _wider_decimal(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    scale = max(a.scale, b.scale)
    precision = max(a.precision - a.scale, b.precision - b.scale) + scale
    if precision <= 38:
        return pa.decimal128(precision, scale)
    return pa.decimal256(precision, scale) if precision <= 76 else None


def unify(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """Return the type that holds every value of ``a`` and of ``b`` exactly (rule 2).

    Returns:
        that type, or None when only JSON text holds both.
    """
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return _wider_int(a, b)
    if pa.types.is_floating(a) and pa.types.is_floating(b):
        return a if a.bit_width >= b.bit_width else b
    if (pa.types.is_integer(a) or pa.types.is_floating(a)) and (pa.types.is_integer(b) or pa.types.is_floating(b)):
        return pa.float64()  # JSON numbers; an integer a double cannot hold exactly fails its row (conform)
    if pa.types.is_decimal(a) and pa.types.is_decimal(b):
        return _wider_decimal(a, b)
    for small, large in ((pa.string(), pa.large_string()), (pa.binary(), pa.large_binary())):
        if {a, b} == {small, large}:
            return large
    return None


def unify_fields(a: pa.Field, b: pa.Field) -> pa.Field:
    """Return the field that holds both columns' values: a JSON-text field where no type does."""
    if is_json_text(a) or is_json_text(b):
        return json_text_field(a.name)
    kind = unify(a.type, b.type)
    return json_text_field(a.name) if kind is None else pa.field(a.name, kind)


def passthrough_names(names: Iterable[str], consumed: Iterable[str]) -> list[str]:
    """Return the pass-through columns among ``names``: not pixelmill's own, not read as settings.

    Args:
        consumed: the input columns the job reads as its own (the prompt and the mapped or
            canonical settings, ``pipelines.sources.ReadRules``).
    """
    own = (
        schema.RESERVED_COLUMNS | set(schema.SOURCE_COLUMNS) | set(consumed)
        | {column for stage in schema.STAGES for column in stage.echoes}
    )
    return [name for name in names if name not in own and not schema.is_internal(name)]


def decide(schemas: Iterable[pa.Schema], consumed: Iterable[str]) -> pa.Schema:
    """Return one schema for the pass-through columns of many files or batches (rules 1 and 2).

    Args:
        schemas: each file's (or JSONL batch's) schema, in input order.
        consumed: see :func:`passthrough_names`.

    Returns:
        the pass-through fields in order of first appearance; an all-null column is text.
    """
    consumed = set(consumed)
    fields: dict[str, pa.Field] = {}
    for each in schemas:
        for name in passthrough_names(each.names, consumed):
            field = each.field(name)
            if name in fields:
                fields[name] = unify_fields(fields[name], field)
            else:
                fields[name] = json_text_field(name) if is_json_text(field) else pa.field(name, field.type)
    return pa.schema([
        pa.field(name, pa.string()) if pa.types.is_null(field.type) else field for name, field in fields.items()
    ])


def for_run(scanned: pa.Schema, committed: pa.Schema | None) -> pa.Schema:
    """Return the pass-through schema a run writes with: the committed one, if any (rule 3).

    Args:
        scanned: this run's input, by :func:`decide`.
        committed: the pass-through fields of the output's committed shards, or None.

    Raises:
        ValueError: the input has a column the committed shards do not (names the columns).
    """
    if committed is None:
        return scanned
    new = [name for name in scanned.names if name not in committed.names]
    if new:
        raise ValueError(
            f"input column(s) {new} are not in this output's shards (columns {committed.names}), whose first "
            "run fixed the output's schema; write this input to a new output, or drop those columns"
        )
    return committed


def _text_of(value: Any) -> str:
    return json.dumps(schema.json_value(value), ensure_ascii=False, sort_keys=True)


def _describe(value: Any) -> str:
    text = _text_of(value)
    return text if len(text) <= 40 else text[:37] + "..."


_UNSTORABLE = object()


def _same(stored: Any, value: Any) -> bool:
    """Whether Arrow stored ``value`` without loss (a struct may add null fields; ``3`` may be ``3.0``)."""
    if isinstance(value, dict):
        return isinstance(stored, dict) and all(_same(stored.get(k), v) for k, v in value.items()) and all(
            stored[k] is None for k in stored if k not in value
        )
    if isinstance(value, (list, tuple)):
        return isinstance(stored, (list, tuple)) and len(stored) == len(value) and all(map(_same, stored, value))
    if isinstance(value, float) and math.isnan(value):
        return isinstance(stored, float) and math.isnan(stored)
    return isinstance(stored, bool) == isinstance(value, bool) and bool(stored == value)


def _fit(values: list[Any], field: pa.Field) -> Iterator[tuple[Any, str | None]]:
    """Each value as ``field`` stores it, or None and the reason it cannot be stored."""
    json_text, text = is_json_text(field), pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
    for value in values:
        if value is None:
            yield None, None
        elif json_text or (text and not isinstance(value, str)):
            yield _text_of(value), None
        else:
            try:
                stored = pa.array([value], field.type)[0].as_py()
            except (pa.ArrowException, OverflowError, TypeError, ValueError):
                stored = _UNSTORABLE
            if stored is not _UNSTORABLE and _same(stored, value):
                yield value, None
            else:
                yield None, (
                    f"column {field.name!r} holds {_describe(value)}, which this output stores as {field.type}"
                )


def to_column(values: list[Any], field: pa.Field) -> tuple[pa.Array, list[str | None]]:
    """Return Python values (a JSONL column) as ``field``'s type, and each row's reason, if it failed.

    A value that does not fit is null in the array and its reason is set (rule 3).
    """
    fitted = list(_fit(values, field))
    return pa.array([value for value, _ in fitted], field.type), [reason for _, reason in fitted]


def _cast(column: pa.ChunkedArray | pa.Array, field: pa.Field) -> tuple[pa.Array | pa.ChunkedArray, list[str | None]]:
    if column.type == field.type and not is_json_text(field):
        return column, [None] * len(column)
    if not is_json_text(field) and unify(column.type, field.type) == field.type:
        try:
            return column.cast(field.type, safe=True), [None] * len(column)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass  # some value does not fit: find which, row by row
    return to_column(column.to_pylist(), field)


def conform(table: pa.Table, declared: pa.Schema) -> pa.Table:
    """Return ``table`` with its pass-through columns in the declared types (a reader's last step).

    A declared column the table lacks is added as nulls. A value that does not fit becomes
    null and its row gets the reason in ``INPUT_ERROR_COLUMN``, so ``pipelines.rows`` makes
    that row an error record (one row's error, never a failed read).
    """
    reasons: list[list[str]] = [[] for _ in range(table.num_rows)]
    for field in declared:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
            continue
        if table.schema.field(field.name).equals(field, check_metadata=True):
            continue  # already stored so (a JSONL reader fits its values itself)
        column, failed = _cast(table.column(field.name), field)
        table = table.set_column(table.column_names.index(field.name), field, column)
        for row, reason in enumerate(failed):
            if reason:
                reasons[row].append(reason)
    if not any(reasons):
        return table
    error = schema.INPUT_ERROR_COLUMN
    earlier = table.column(error).to_pylist() if error in table.column_names else [None] * table.num_rows
    merged = pa.array(["; ".join([e for e in (old, *new) if e]) or None for old, new in zip(earlier, reasons)],
                      pa.string())
    if error in table.column_names:
        return table.set_column(table.column_names.index(error), error, merged)
    return table.append_column(error, merged)


def restore(table: pa.Table, declared: pa.Schema) -> pa.Table:
    """Return a finished shard's table with the declared pass-through types (the sink's step).

    The model stages hand rows back as numpy arrays, from which Arrow infers types again
    (an all-null column as ``null``, a ``decimal128(10, 2)`` as ``decimal128(4, 2)``); the
    values were conformed when read, so a safe cast puts them back. A declared column the
    shard lacks is added as nulls. Should a cast fail anyway, the column keeps its own
    type in this shard: never a failed shard, never a changed value.
    """
    for field in declared:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
            continue
        have = table.column(field.name)
        if have.type != field.type:
            if not (pa.types.is_null(have.type) or unify(have.type, field.type) == field.type):
                continue
            try:
                have = have.cast(field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                continue
        table = table.set_column(table.column_names.index(field.name), field, have)
    return table
