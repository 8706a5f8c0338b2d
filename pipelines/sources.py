"""Prompt tables (Parquet, JSONL, CSV) at any fsspec URI, read by Ray Data.

Listing goes through fsspec (so globs and ``s3://`` prefixes work the same as
local folders); reading goes through Ray Data's ``FileBasedDatasource``, which
gives parallel read tasks, retries and locality.  Ray's stock readers do not
say where in its file a row came from, which stable row ids need, so
:class:`PromptTableDatasource` adds two columns while streaming each file:
``source`` (the file's path relative to the input root) and ``source_row``.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from pipelines.schema import INPUT_ERROR_COLUMN, LINE_COLUMN, SOURCE, SOURCE_ROW
from pipelines.spec import InputSpec
from pipelines.storage import filesystem

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "FORMAT_READERS", "INPUT_ERROR_COLUMN", "PromptTableDatasource",
    "input_columns", "list_input_files", "read_prompts",
]

_GLOB_CHARS = "*?["


def _read_parquet(f: pa.NativeFile) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(f).iter_batches(batch_size=8192)


def _read_jsonl(f: pa.NativeFile) -> Iterator[pa.RecordBatch]:
    # Not pyarrow.json: it fails the whole file on one bad line (bad UTF-8,
    # broken JSON, a value of another type); here that line becomes a row
    # whose INPUT_ERROR_COLUMN says why, and the rest of the file is read.
    rows: list[dict[str, Any]] = []
    for number, line in _lines(f):
        if not line.strip():
            continue
        rows.append(_parse_json_line(number, line))
        if len(rows) == _JSONL_CHUNK_ROWS:
            yield _rows_to_batch(rows)
            rows = []
    if rows:
        yield _rows_to_batch(rows)


_JSONL_CHUNK_ROWS = 8192


def _lines(f: pa.NativeFile) -> Iterator[tuple[int, bytes]]:
    """Yield ``(1-based line number, line bytes)`` from a binary stream, reading 1 MiB at a time."""
    number, pending = 0, b""
    while chunk := f.read(1 << 20):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            number += 1
            yield number, line
    if pending:
        yield number + 1, pending


def _parse_json_line(number: int, line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        return {INPUT_ERROR_COLUMN: f"line {number} is not valid UTF-8 ({error.reason} at byte {error.start})"}
    except json.JSONDecodeError as error:
        return {INPUT_ERROR_COLUMN: f"line {number} is not valid JSON ({error.msg} at column {error.colno})"}
    if not isinstance(value, dict):
        return {INPUT_ERROR_COLUMN: f"line {number} is a JSON {type(value).__name__}, not an object"}
    value.pop(INPUT_ERROR_COLUMN, None)
    value[LINE_COLUMN] = number
    return value


def _rows_to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Build one batch; a value whose type differs from its column's usual type makes its row an error row."""
    columns = list(dict.fromkeys(key for row in rows for key in row if key not in (LINE_COLUMN, INPUT_ERROR_COLUMN)))
    for column in columns:
        kinds = Counter(_json_kind(row[column]) for row in rows if row.get(column) is not None)
        if len(kinds) <= 1:
            continue
        usual = kinds.most_common(1)[0][0]
        for row in rows:
            value = row.get(column)
            if value is not None and _json_kind(value) != usual and INPUT_ERROR_COLUMN not in row:
                row[INPUT_ERROR_COLUMN] = (
                    f"line {row[LINE_COLUMN]}: column {column!r} holds a {_json_kind(value)} "
                    f"where the file's other rows hold a {usual}"
                )
                row[column] = None
    data = {column: [row.get(column) for row in rows] for column in columns}
    data[INPUT_ERROR_COLUMN] = [row.get(INPUT_ERROR_COLUMN) for row in rows]
    table = pa.table({k: pa.array(v) if k != INPUT_ERROR_COLUMN else pa.array(v, pa.string()) for k, v in data.items()})
    return table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([])


def _json_kind(value: Any) -> str:
    """Name a JSON value's type as Arrow sees it (ints and floats mix, everything else does not)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    kinds: dict[type, str] = {str: "string", list: "list", dict: "object"}
    return kinds.get(type(value), type(value).__name__)


def _read_csv(f: pa.NativeFile) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pc

    yield from pc.open_csv(f)


# Format name -> (file extensions, streaming reader of one file).
FORMAT_READERS: dict[str, tuple[tuple[str, ...], Callable[[pa.NativeFile], Iterator[pa.RecordBatch]]]] = {
    "parquet": ((".parquet", ".pq"), _read_parquet),
    "jsonl": ((".jsonl", ".json", ".ndjson"), _read_jsonl),
    "csv": ((".csv",), _read_csv),
}


def _format_of(path: str) -> str | None:
    for name, (extensions, _) in FORMAT_READERS.items():
        if path.lower().endswith(extensions):
            return name
    return None


def list_input_files(spec: InputSpec, storage_options: dict[str, Any] | None = None) -> tuple[Any, list[str], str, str]:
    """List the prompt files of an input URI, sorted, and pick their format.

    Returns:
        ``(fsspec filesystem, sorted file paths, root path, format name)``; the
        root is what ``source`` names are relative to.

    Raises:
        FileNotFoundError: nothing readable at the URI.
        ValueError: mixed or unknown formats with ``format: auto``.
    """
    fs, path = filesystem(spec.uri, storage_options)
    if any(char in path for char in _GLOB_CHARS):
        files = [p for p in fs.glob(path) if fs.isfile(p)]
        root = path[: min(path.index(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
    elif fs.isdir(path):
        files = fs.find(path)
        root = path.rstrip("/")
    elif fs.isfile(path):
        files = [path]
        root = posixpath.dirname(path)
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
    """

    def __init__(self, paths: list[str], *, format: str, source_names: dict[str, str], filesystem: Any) -> None:
        super().__init__(paths, filesystem=filesystem)
        self._reader = FORMAT_READERS[format][1]
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
            for batch in self._reader(f):
                table = pa.Table.from_batches([batch])
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


def input_columns(listing: tuple) -> list[str] | None:
    """Return the column names of the input's first readable batch, read here on the driver.

    What ``Dataset.schema()`` would say (the schema of the first block), without running a
    Ray Data execution for it: that costs a few seconds of every job's start-up (a read
    task, and Ray Data's resource budget starting at zero).  ``None`` when no file has a
    row or a schema to show.

    Raises:
        ValueError: the first file cannot be read as a prompt table.
    """
    fs, files, root, fmt = listing
    reader = FORMAT_READERS[fmt][1]
    for path in files:
        name = posixpath.relpath(path, root) if root else path
        try:
            with fs.open(path, "rb") as handle:
                first = next(iter(reader(pa.PythonFile(handle, mode="r"))), None)
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as error:
            raise ValueError(f"input file {name} could not be read as a prompt table: {error}") from error
        if first is not None:
            return first.schema.names
    return None


def read_prompts(
    spec: InputSpec, storage_options: dict[str, Any] | None = None, *, listing: tuple | None = None
) -> ray.data.Dataset:
    """Return a Ray dataset of the prompt rows, with ``source`` and ``source_row`` columns.

    Args:
        listing: the result of :func:`list_input_files` when the caller already has it.
    """
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, files, root, fmt = listing or list_input_files(spec, storage_options)
    names = {p: posixpath.relpath(p, root) if root else p for p in files}
    datasource = PromptTableDatasource(
        files, format=fmt, source_names=names, filesystem=PyFileSystem(FSSpecHandler(fs))
    )
    return ray.data.read_datasource(datasource)
