"""Prompt tables (Parquet, JSONL, CSV) at any fsspec URI, read by Ray Data.

Listing goes through fsspec (so globs and ``s3://`` prefixes work the same as
local folders); reading goes through Ray Data's ``FileBasedDatasource``, which
gives parallel read tasks, retries and locality.  Ray's stock readers do not
say where in its file a row came from, which stable row ids need, so
:class:`PromptTableDatasource` adds two columns while streaming each file:
``source`` (the file's path relative to the input root) and ``source_row``.

Reading rules (one value or one file's shape never sinks a job):

1. CSV has no types: every CSV column is read as text, and quoted values may
   span lines.  An empty field is null (the value is missing, so a setting
   falls back to the job's default); a quoted empty field ``""`` is the empty
   string.  Canonical columns are parsed per row by ``pipelines.rows``, so a
   bad value fails its row only.
2. JSONL canonical fields (id, negative_prompt, seed, width, height, steps,
   guidance, style, style_strength, style_preserve_color, and the columns
   ``input.columns`` maps to them) are passed on as text: a JSON string as is,
   any other JSON value as its JSON text (``64`` -> ``"64"``), null as null.
   The prompt must be a JSON string or null: any other value makes its row an
   error row.
3. A JSONL pass-through field whose values do not share one JSON type, or
   that Arrow cannot hold (an integer beyond 64 bits, a nested object whose
   inner types differ), is a JSON-text column: never a row error, never a
   read failure.  Each pass-through column has one type for the whole output,
   decided before any work from the whole input (:func:`passthrough_schema`,
   ``pipelines.column_types``); every batch is put into it as it is read.
4. Ids are text: CSV ids ``007`` and ``7`` stay ``"007"`` and ``"7"``.
5. A UTF-8 byte-order mark at the start of a CSV or JSONL file is skipped.  A
   JSONL line that is not UTF-8, not JSON, not an object, or holds a lone
   UTF-16 surrogate escape (``"\\ud800"``) becomes one row carrying
   ``_pm_input_error`` (the reason); the fields it can keep (its id among
   them) stay in that row.
6. A 0-byte file of any format is zero rows (a 0-byte Parquet file too: it
   holds no data, rather than corrupt data).  A non-empty file that is not
   valid Parquet, or a CSV whose rows do not parse, stops the job with an
   error naming the file.
7. A URI that names an existing file or object means exactly that file, even
   when its name holds glob characters (``[1].jsonl``, ``q?.jsonl``); glob
   characters are a pattern only when no such file exists.  A folder or
   prefix means every file under it.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from pipelines import column_types, schema
from pipelines.grid import GRID_SOURCE, grid_rows
from pipelines.schema import INPUT_ERROR_COLUMN, LINE_COLUMN, SOURCE, SOURCE_ROW
from pipelines.spec import ColumnMap, InputSpec
from pipelines.storage import filesystem

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "FORMAT_READERS", "GRID_FORMAT", "INPUT_ERROR_COLUMN", "PromptTableDatasource", "ReadRules",
    "input_columns", "input_schema", "list_input_files", "passthrough_schema", "read_prompts",
]

_GLOB_CHARS = "*?["
_BOM = b"\xef\xbb\xbf"
# Canonical fields read as text from JSONL (rule 2); rows.py and the style stage parse them per row.
_TEXT_FIELDS: tuple[str, ...] = (
    *(name for name in ColumnMap.model_fields if name != schema.PROMPT),
    schema.STYLE, schema.STYLE_STRENGTH, schema.STYLE_PRESERVE_COLOR,
)


@dataclass(frozen=True)
class ReadRules:
    """What a reader needs to know of the job's columns.

    Attributes:
        prompt: the input column holding the prompt (must be text).
        id: the input column holding the row id (kept on rows the reader rejects).
        text: input columns passed on as text (the canonical fields and their mapped names).
    """

    prompt: str = schema.PROMPT
    id: str = schema.ID
    text: frozenset[str] = frozenset(_TEXT_FIELDS)
    declared: pa.Schema | None = None

    @property
    def consumed(self) -> frozenset[str]:
        """The input columns the job reads as its own (never pass-through)."""
        return self.text | {self.prompt, self.id}

    @classmethod
    def of(
        cls, columns: ColumnMap, extra_text: tuple[str, ...] = (), declared: pa.Schema | None = None
    ) -> ReadRules:
        """Return the rules for a job's ``input.columns`` (plus other columns to read as text).

        Args:
            declared: the pass-through schema every batch is put into (``pipelines.column_types``).
        """
        mapped = columns.overrides()
        return cls(
            prompt=columns.prompt,
            id=columns.id or schema.ID,
            text=frozenset({*_TEXT_FIELDS, *(v for k, v in mapped.items() if k != schema.PROMPT), *extra_text})
            - {columns.prompt},
            declared=declared,
        )


def _read_parquet(f: pa.NativeFile, rules: ReadRules) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    if f.size() == 0:  # rule 6: a 0-byte file is zero rows
        return
    yield from pq.ParquetFile(f).iter_batches(batch_size=8192)


def _read_jsonl(f: pa.NativeFile, rules: ReadRules) -> Iterator[pa.RecordBatch]:
    # Not pyarrow.json: it fails the whole file on one bad line (bad UTF-8,
    # broken JSON, a value of another type); here that line becomes a row
    # whose INPUT_ERROR_COLUMN says why, and the rest of the file is read.
    rows: list[dict[str, Any]] = []
    for number, line in _lines(f):
        if not line.strip():
            continue
        rows.append(_parse_json_line(number, line, rules))
        if len(rows) == _JSONL_CHUNK_ROWS:
            yield _rows_to_batch(rows, rules)
            rows = []
    if rows:
        yield _rows_to_batch(rows, rules)


_JSONL_CHUNK_ROWS = 8192
# A \uD800-\uDFFF escape: the only way a JSON text can hold a string Arrow cannot encode.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _lines(f: pa.NativeFile) -> Iterator[tuple[int, bytes]]:
    """Yield ``(1-based line number, line bytes)`` from a binary stream, reading 1 MiB at a time.

    A UTF-8 byte-order mark at the start of the stream is skipped.
    """
    number, pending = 0, b""
    while chunk := f.read(1 << 20):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            number += 1
            yield number, line.removeprefix(_BOM) if number == 1 else line
    if pending:
        yield number + 1, pending.removeprefix(_BOM) if number == 0 else pending


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_json_line(number: int, line: bytes, rules: ReadRules) -> dict[str, Any]:
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        return {INPUT_ERROR_COLUMN: f"line {number} is not valid UTF-8 ({error.reason} at byte {error.start})"}
    except json.JSONDecodeError as error:
        return {INPUT_ERROR_COLUMN: f"line {number} is not valid JSON ({error.msg} at column {error.colno})"}
    if not isinstance(value, dict):
        return {INPUT_ERROR_COLUMN: f"line {number} is a JSON {type(value).__name__}, not an object"}
    value.pop(INPUT_ERROR_COLUMN, None)
    errors: list[str] = []
    if _SURROGATE_ESCAPE.search(line) and not _encodable(value):
        bad = [key for key, item in value.items() if not (_encodable(key) and _encodable(item))]
        for key in bad:
            del value[key]
        errors.append(
            f"line {number}: {', '.join(ascii(key) for key in bad)} "
            f"{'holds' if len(bad) == 1 else 'hold'} a lone UTF-16 surrogate escape (such as \\ud800), "
            "which is not text"
        )
    prompt = value.get(rules.prompt)
    if prompt is not None and not isinstance(prompt, str):
        errors.append(f"line {number}: column {rules.prompt!r} holds a {_json_kind(prompt)}, not text")
        del value[rules.prompt]
    if errors:
        value[INPUT_ERROR_COLUMN] = "; ".join(errors)
    value[LINE_COLUMN] = number
    return value


def _json_text(value: Any) -> str | None:
    """A value as text: a string as is, null as null, any other JSON value as its JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _passthrough_field(name: str, values: list[Any]) -> tuple[pa.Field, pa.Array]:
    """Arrow's own type for values that share one JSON type, else each value's JSON text (rule 3)."""
    if len({_json_kind(v) for v in values if v is not None}) <= 1:
        try:
            array = pa.array(values)
            return pa.field(name, array.type), array
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            pass
    texts = [None if v is None else json.dumps(v, ensure_ascii=False, sort_keys=True) for v in values]
    return column_types.json_text_field(name), pa.array(texts, pa.string())


def _rows_to_batch(rows: list[dict[str, Any]], rules: ReadRules) -> pa.RecordBatch:
    """Build one batch: canonical fields as text, pass-through fields in their declared types
    (``rules.declared``), or else by :func:`_passthrough_field`."""
    columns = list(dict.fromkeys(key for row in rows for key in row if key not in (LINE_COLUMN, INPUT_ERROR_COLUMN)))
    declared = rules.declared if rules.declared is not None else pa.schema([])
    errors = [[row[INPUT_ERROR_COLUMN]] if row.get(INPUT_ERROR_COLUMN) else [] for row in rows]
    fields, arrays = [], []
    for column in columns:
        values = [row.get(column) for row in rows]
        if column in rules.text:
            field, array = pa.field(column, pa.string()), pa.array([_json_text(v) for v in values], pa.string())
        elif column in declared.names:
            field = declared.field(column)
            array, reasons = column_types.to_column(values, field)
            for row_errors, reason in zip(errors, reasons):
                if reason:
                    row_errors.append(reason)
        else:
            field, array = _passthrough_field(column, values)
        fields.append(field)
        arrays.append(array)
    fields.append(pa.field(INPUT_ERROR_COLUMN, pa.string()))
    arrays.append(pa.array(["; ".join(e) if e else None for e in errors], pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _json_kind(value: Any) -> str:
    """Name a JSON value's type as Arrow sees it (ints and floats mix, everything else does not)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    kinds: dict[type, str] = {str: "string", list: "list", dict: "object"}
    return kinds.get(type(value), type(value).__name__)


class _Prefixed(io.RawIOBase):
    """A read-only stream: ``head`` (bytes already read), then the rest of ``f``."""

    def __init__(self, head: bytes, f: Any) -> None:
        super().__init__()
        self._head, self._f = head, f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = len(buffer)
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
        else:
            data = self._f.read(size)
        buffer[: len(data)] = data
        return len(data)


def _csv_header(f: pa.NativeFile) -> tuple[bytes, int]:
    """Read from ``f`` until the header record has ended (a newline outside quotes).

    Returns:
        ``(the bytes read, the length of the header record in them)``.
    """
    head = b""
    while chunk := f.read(1 << 16):
        head += chunk
        quoted = False
        for match in re.finditer(rb'["\n]', head):
            if match.group() == b'"':
                quoted = not quoted
            elif not quoted:
                return head, match.end()
    return head, len(head)


def _read_csv(f: pa.NativeFile, rules: ReadRules) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pc

    head, header_end = _csv_header(f)
    if not head.removeprefix(_BOM).strip():  # rule 6: a 0-byte (or blank) file is zero rows
        return
    parse = pc.ParseOptions(newlines_in_values=True)
    # The column names as pyarrow itself parses the header (BOM, quotes), then every column as text.
    names = pc.open_csv(io.BytesIO(head[:header_end]), parse_options=parse).schema.names
    convert = pc.ConvertOptions(
        column_types={name: pa.string() for name in names},
        strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=False,
    )
    yield from pc.open_csv(_Prefixed(head, f), parse_options=parse, convert_options=convert)


# Format name -> (file extensions, streaming reader of one file).
FORMAT_READERS: dict[str, tuple[tuple[str, ...], Callable[[pa.NativeFile, ReadRules], Iterator[pa.RecordBatch]]]] = {
    "parquet": ((".parquet", ".pq"), _read_parquet),
    "jsonl": ((".jsonl", ".json", ".ndjson"), _read_jsonl),
    "csv": ((".csv",), _read_csv),
}


GRID_FORMAT = "grid"


def _grid_batches(grid: dict[str, list[Any]], rules: ReadRules) -> Iterator[pa.Table]:
    """The grid's rows (``pipelines.grid``) as a reader yields a file's: ``source`` and ``source_row`` added.

    Each key's column has one type over the whole grid (a key of ints and floats is float64 in
    every batch); a run's declared schema wins where it names the column.
    """
    own = pa.schema([_passthrough_field(key, values)[0] for key, values in grid.items() if key not in rules.text])
    declared = own if rules.declared is None else rules.declared
    rows = grid_rows(grid, id_column=rules.id)
    offset = 0
    while chunk := list(itertools.islice(rows, _JSONL_CHUNK_ROWS)):
        table = pa.Table.from_batches([_rows_to_batch(chunk, dataclasses.replace(rules, declared=declared))])
        if rules.declared is not None:
            table = column_types.conform(table, rules.declared)
        table = table.append_column(SOURCE, pa.array([GRID_SOURCE] * table.num_rows, pa.string()))
        yield table.append_column(SOURCE_ROW, pa.array(range(offset, offset + table.num_rows), pa.int64()))
        offset += table.num_rows


def _format_of(path: str) -> str | None:
    for name, (extensions, _) in FORMAT_READERS.items():
        if path.lower().endswith(extensions):
            return name
    return None


def list_input_files(spec: InputSpec, storage_options: dict[str, Any] | None = None) -> tuple[Any, list[str], str, str]:
    """List the prompt files of an input URI, sorted, and pick their format.

    A URI naming an existing file means that file, glob characters or not (rule 7).

    Returns:
        ``(fsspec filesystem, sorted file paths, root path, format name)``; the
        root is what ``source`` names are relative to. A grid input (``input.grid``) is
        ``(the grid mapping, [], "", GRID_FORMAT)``: no files, and every function here that
        takes a listing builds the grid's rows instead (:func:`_grid_batches`).

    Raises:
        FileNotFoundError: nothing readable at the URI.
        ValueError: mixed or unknown formats with ``format: auto``.
    """
    if spec.grid is not None:
        return spec.grid, [], "", GRID_FORMAT
    assert spec.uri is not None  # the spec holds exactly one of uri and grid
    fs, path = filesystem(spec.uri, storage_options)
    # A listing cached by an earlier run in this process (s3fs keeps one per instance) may be stale.
    fs.invalidate_cache(path.split("*")[0].split("?")[0].split("[")[0])
    if fs.isfile(path):
        files = [path]
        root = posixpath.dirname(path)
    elif fs.isdir(path):
        files = fs.find(path)
        root = path.rstrip("/")
    elif any(char in path for char in _GLOB_CHARS):
        files = [p for p in fs.glob(path) if fs.isfile(p)]
        root = path[: min(path.index(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
    else:
        raise FileNotFoundError(f"input.uri: nothing found at {spec.uri}")
    files = sorted(p for p in files if not posixpath.basename(p).startswith(("_", ".")))
    if spec.format != "auto":
        extensions = FORMAT_READERS[spec.format][0]
        chosen = [p for p in files if p.lower().endswith(extensions)] or files
        return fs, chosen, root, spec.format
    formats = {p: _format_of(p) for p in files}
    found = {f for f in formats.values() if f}
    if not found:
        known = [ext for exts, _ in FORMAT_READERS.values() for ext in exts]
        raise FileNotFoundError(f"input.uri: no {', '.join(known)} files at {spec.uri}")
    if len(found) > 1:
        raise ValueError(f"input.uri: mixed formats {sorted(found)} at {spec.uri}; set input.format")
    fmt = found.pop()
    return fs, [p for p, f in formats.items() if f == fmt], root, fmt


class PromptTableDatasource(FileBasedDatasource):
    """Ray Data datasource for prompt files that numbers rows within each file.

    Args:
        paths: files to read (already listed, sorted).
        format: a key of :data:`FORMAT_READERS`.
        source_names: ``{path: name relative to the input root}``.
        filesystem: a pyarrow filesystem (fsspec ones are wrapped by the caller).
        rules: the job's columns as the readers need them (default: unmapped columns).
    """

    def __init__(
        self, paths: list[str], *, format: str, source_names: dict[str, str], filesystem: Any,
        rules: ReadRules | None = None,
    ) -> None:
        super().__init__(paths, filesystem=filesystem)
        self._reader = FORMAT_READERS[format][1]
        self._rules = rules or ReadRules()
        self._random_access = format == "parquet"
        self._source_names = source_names

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> pa.NativeFile:
        # Parquet keeps its footer at the end of the file, so it needs a seekable handle.
        if self._random_access:
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        name = self._source_names.get(path, path)
        offset = 0
        try:
            for batch in self._reader(f, self._rules):
                table = pa.Table.from_batches([batch])
                if self._rules.declared is not None:
                    table = column_types.conform(table, self._rules.declared)
                if {SOURCE, SOURCE_ROW} & set(table.column_names):
                    raise ValueError(
                        f"input file {name} has a 'source' or 'source_row' column, which pixelmill "
                        "writes itself; rename it"
                    )
                rows = pa.array(range(offset, offset + table.num_rows), type=pa.int64())
                table = table.append_column(SOURCE, pa.array([name] * table.num_rows, type=pa.string()))
                yield table.append_column(SOURCE_ROW, rows)
                offset += table.num_rows
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as error:
            raise ValueError(f"input file {name} could not be read as a prompt table: {error}") from error


def input_columns(listing: tuple, *, columns: ColumnMap | None = None) -> list[str] | None:
    """Return the column names of the input's first readable batch (see :func:`input_schema`)."""
    schema = input_schema(listing, columns=columns)
    return None if schema is None else schema.names


def input_schema(listing: tuple, *, columns: ColumnMap | None = None) -> pa.Schema | None:
    """Return the Arrow schema of the input's first readable batch, read here on the driver.

    What ``Dataset.schema()`` would say (the schema of the first block), without running a
    Ray Data execution for it: that costs a few seconds of every job's start-up (a read
    task, and Ray Data's resource budget starting at zero).  ``None`` when no file has a
    row or a schema to show.  The files are read by the same readers and rules as
    :func:`read_prompts` (a 0-byte file is skipped like any file without rows).

    Raises:
        ValueError: the first file cannot be read as a prompt table.
    """
    fs, files, root, fmt = listing
    rules = ReadRules.of(columns) if columns is not None else ReadRules()
    if fmt == GRID_FORMAT:
        first = next(_grid_batches(fs, rules)).schema
        return pa.schema([field for field in first if field.name not in (SOURCE, SOURCE_ROW)])  # as a file's
    reader = FORMAT_READERS[fmt][1]
    for path in files:
        name = posixpath.relpath(path, root) if root else path
        try:
            with fs.open(path, "rb") as handle:
                first = next(iter(reader(pa.PythonFile(handle, mode="r"), rules)), None)
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as error:
            raise ValueError(f"input file {name} could not be read as a prompt table: {error}") from error
        if first is not None:
            return first.schema
    return None


def _file_schemas(fs: Any, path: str, fmt: str, rules: ReadRules) -> Iterator[pa.Schema]:
    """The schemas a file's rows come in: a Parquet footer, a CSV's first batch, every JSONL batch."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        f = pa.PythonFile(handle, mode="r")
        if fmt == "parquet":
            if f.size():
                yield pq.read_schema(f)
            return
        batches = FORMAT_READERS[fmt][1](f, rules)
        if fmt == "csv":  # every CSV column is text: the first batch says it all
            first = next(batches, None)
            batches = iter([] if first is None else [first])
        for batch in batches:
            yield batch.schema


def passthrough_schema(
    listing: tuple, *, columns: ColumnMap | None = None, extra_text: tuple[str, ...] = ()
) -> pa.Schema:
    """Return the one schema of the input's pass-through columns (``pipelines.column_types``, rules 1-2).

    Read here on the driver before any work: Parquet footers, each CSV's header, and every
    JSONL file whole (JSON declares no types).

    Raises:
        ValueError: a file cannot be read as a prompt table (names it).
    """
    fs, files, root, fmt = listing
    rules = ReadRules.of(columns, extra_text) if columns is not None else ReadRules()
    if fmt == GRID_FORMAT:
        return column_types.decide([next(_grid_batches(fs, rules)).schema], rules.consumed)

    def schemas() -> Iterator[pa.Schema]:
        for path in files:
            try:
                yield from _file_schemas(fs, path, fmt, rules)
            except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as error:
                name = posixpath.relpath(path, root) if root else path
                raise ValueError(f"input file {name} could not be read as a prompt table: {error}") from error

    return column_types.decide(schemas(), rules.consumed)


def read_prompts(
    spec: InputSpec, storage_options: dict[str, Any] | None = None, *, listing: tuple | None = None,
    text_columns: tuple[str, ...] = (), declared: pa.Schema | None = None,
) -> ray.data.Dataset:
    """Return a Ray dataset of the prompt rows, with ``source`` and ``source_row`` columns.

    Args:
        listing: the result of :func:`list_input_files` when the caller already has it.
        text_columns: more input columns to read as text from JSONL (say, a style
            stage's own column names); ``spec.columns`` and the canonical names always are.
        declared: the pass-through schema of the run (:func:`passthrough_schema`, or the
            committed shards'); every batch is put into it (``pipelines.column_types.conform``).
    """
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, files, root, fmt = listing or list_input_files(spec, storage_options)
    if fmt == GRID_FORMAT:  # built on the driver (at most pipelines.grid.MAX_GRID_ROWS rows), in blocks
        return ray.data.from_arrow(list(_grid_batches(fs, ReadRules.of(spec.columns, text_columns, declared))))
    names = {p: posixpath.relpath(p, root) if root else p for p in files}
    datasource = PromptTableDatasource(
        files, format=fmt, source_names=names, filesystem=PyFileSystem(FSSpecHandler(fs)),
        rules=ReadRules.of(spec.columns, text_columns, declared),
    )
    return ray.data.read_datasource(datasource)
