"""Turn raw input rows into pixelmill's canonical row: id, seed, generation settings, status.

Runs as a Ray Data ``map_batches`` task on pyarrow batches.  Only the canonical
fields are read (as Python objects, per row); every other input column passes
through as the same Arrow column, untouched, so no value of any type or size
goes through pandas, numpy, int64 or float64 on the way.  Bad values never
raise: the row gets ``status="error"``, ``stage="input"``, a reason and its
canonical inputs as read (``raw_input``, so ``retry-errors`` meets the same values
and the same reason), and flows on so that it is written to the shard's Parquet
like every other row.

Value rules (the README quotes them):

- ``seed``: a whole number in ``[0, 2**63)`` (what a Parquet ``int64`` holds).
  Negative, larger, fractional (``1.5``), non-numeric (``"12x"``), NaN or
  infinite seeds make the row an error record.  A missing seed is derived
  from the job seed and the row id.
- ``width``, ``height``, ``steps``: whole numbers, positive and below
  ``2**63`` (``width``/``height`` multiples of 8); ``guidance``: a finite
  number ``>= 0``.  A float with a whole value (``64.0``) counts as that
  whole number; booleans are not numbers.
- Numbers may arrive as text (CSV cells, JSON text): surrounding whitespace is
  ignored, and the rest must be a decimal number as JSON writes it: optional
  sign, digits, optional fraction, optional exponent (``"64"``, ``" 64 "``,
  ``"64.0"``, ``"6.4e1"`` all give 64; ``"64.5"`` is not a whole number;
  ``"0x40"``, ``"1_000"``, ``"nan"``, ``"inf"`` are not numbers).  Text is
  parsed exactly (no rounding through float64), so ``"9223372036854775807"``
  is a valid seed.  Empty or whitespace-only text counts as missing (the
  job's default, or a derived seed).
- ``id``: text is the id exactly as written (``"007"`` stays ``"007"``, no
  trimming); an integer is its decimal digits (``7`` -> ``"7"``, exact at any
  size); a float is written as Python writes it (``7.0`` -> ``"7.0"``: store
  ids as text or integers).  A missing, NaN or empty/whitespace-only id is
  derived as ``<source>#<source_row>``.
- ``images_per_prompt`` (the column ``input.columns.images_per_prompt`` names, read when the
  job fans out, ``pipelines.fanout``): a whole number in ``[1, MAX_IMAGES_PER_PROMPT]``
  (1000), by the number rules above; missing means the job's ``images_per_prompt``.
  Zero, negative, fractional, larger or non-numeric counts make the row an error record.
- Text that cannot be encoded as UTF-8 (a lone surrogate) in ``id``,
  ``prompt`` or ``negative_prompt`` makes the row an error record; the
  record's text shows the bad code point escaped (``\\ud800``).
"""

from __future__ import annotations

import decimal
import hashlib
import math
import numbers
import re
from typing import Any

import pyarrow as pa

from pipelines import schema
from pipelines.prompt_template import Template
from pipelines.prompt_template import check_columns as check_template_columns
from pipelines.schema import IMAGES_PER_PROMPT_COLUMN, INPUT_ERROR_COLUMN, OUTPUT_COLUMNS, RESERVED_COLUMNS, Status
from pipelines.spec import ColumnMap, GenerationDefaults

# INPUT_ERROR_COLUMN, OUTPUT_COLUMNS and RESERVED_COLUMNS live in ``pipelines.schema``; re-exported here.
__all__ = [
    "INPUT_ERROR_COLUMN", "MAX_IMAGES_PER_PROMPT", "OUTPUT_COLUMNS", "RESERVED_COLUMNS", "SEED_LIMIT",
    "attempt_seed", "child_seed", "llm_retry_seed", "variation_seed", "derive_seed", "prepare_rows",
    "check_passthrough_columns",
]

_INT_FIELDS = (schema.WIDTH, schema.HEIGHT, schema.STEPS)
# Seeds are whole numbers in [0, SEED_LIMIT): what the int64 ``seed`` column holds.
SEED_LIMIT = 2**63
# Integer settings are stored as int64 too.
_INT_LIMIT = 2**63
# Arrow types of the canonical columns, in the order ``prepare_rows`` writes them.
_CANONICAL_TYPES: dict[str, pa.DataType] = {
    name: pa.int64() if name in (*_INT_FIELDS, schema.SEED, schema.IMAGE_INDEX)
    else pa.float64() if name == schema.GUIDANCE else pa.string()
    for name in schema.CANONICAL_COLUMNS
}
# The most images one input row may ask for (a typo like 10000 is an error record, not a run 10x larger).
MAX_IMAGES_PER_PROMPT = 1000
# A number written as text: optional sign, digits, optional fraction, optional exponent (ASCII only).
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# A parsed number whose decimal exponent is above this is out of every range (and never expanded).
_MAX_DIGITS = 100


def derive_seed(job_seed: int, row_id: str) -> int:
    """Return a row's seed from the job seed and the row id (stable across runs and machines)."""
    digest = hashlib.sha256(f"{job_seed}:{row_id}".encode("utf-8", "backslashreplace")).digest()
    return int.from_bytes(digest[:4], "little")


def _salted_seed(salt: str, seed: int, index: int) -> int:
    """Return the seed ``index`` derived from ``seed`` under ``salt``: ``seed`` itself for index 0, else
    the first 4 bytes (little-endian) of sha256(``<salt>:<seed>:<index>``). One salt per fan-out kind, so
    two kinds never hash the same text. Returns a whole number in ``[0, 2**32)`` (``seed`` for index 0)."""
    if index == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{salt}:{seed}:{index}".encode()).digest()[:4], "little")


def child_seed(seed: int, image_index: int) -> int:
    """Return the seed of image ``image_index`` of a row whose seed is ``seed`` (``pipelines.fanout``).

    Image 0 keeps the row's seed itself, so ``images_per_prompt: 1`` and image 0 of any
    fan-out draw the same image; image ``k > 0`` hashes the seed with the salt ``image``
    (a regenerate attempt uses another salt, so image 1 never equals attempt 1 of image 0).
    """
    return _salted_seed("image", seed, image_index)


def attempt_seed(seed: int, attempt: int) -> int:
    """Return the seed of a row's regenerate attempt ``attempt`` (0-based) from the row's seed.

    Attempt 0 is the row seed itself, so a job without the loop draws the same image. Later
    attempts hash the row seed and the attempt number with the salt ``attempt`` (:func:`child_seed`
    uses the salt ``image``).
    """
    return _salted_seed("attempt", seed, attempt)


def variation_seed(seed: int, variation: int) -> int:
    """Return the seed of prompt variation ``variation`` of a row whose seed is ``seed`` (``pipelines.fanout``).

    Variation 0 keeps the row's seed; a later one hashes it with the salt ``variation``.
    """
    return _salted_seed("variation", seed, variation)


def llm_retry_seed(seed: int, retry: int) -> int:
    """Return the seed of the LLM stage's draw ``retry`` (0: the first) of a sample whose LLM seed is ``seed``.

    Draw 0 is the seed itself; a redraw (``llm.retries``) hashes it with the salt ``llm``.
    """
    return _salted_seed("llm", seed, retry)


# Column names that usually hold the prompt, in the order a mapping hint suggests them.
_PROMPT_LIKE = ("text", "caption", "prompt_text", "description", "sentence", "title")


def check_input_columns(
    names: list[str], columns: ColumnMap, *, uri: str, templates: tuple[Template, ...] = ()
) -> None:
    """Raise ``ValueError`` when the input lacks the prompt column or a column a template names,
    or a column clashes with an output column.

    Args:
        names: the input's column names (pixelmill's own source columns are ignored).
        columns: the spec's ``input.columns``.
        uri: the input, named in the message.
        templates: the job's prompt templates; with a ``prompt_template`` no prompt column is needed.

    The message says how to map the prompt column from the command line
    (``--set input.columns.prompt=text``), naming the likeliest column.
    """
    found = [c for c in names if c not in (*schema.SOURCE_COLUMNS, INPUT_ERROR_COLUMN)]
    check_template_columns(templates, found, source=uri)
    if columns.prompt not in found and not any(_TEMPLATE_FIELDS[t.key] == schema.PROMPT for t in templates):
        likely = [c for c in _PROMPT_LIKE if c in found] or found or ["COLUMN"]
        raise ValueError(
            f"input.columns.prompt: column {columns.prompt!r} not in the input {uri} (columns: {found}); "
            f"map the prompt column with --set input.columns.prompt={likely[0]} "
            f"(or input.columns.prompt in the job YAML)"
        )
    check_passthrough_columns(found, columns)


def check_passthrough_columns(input_columns: list[str], columns: ColumnMap) -> None:
    """Raise ``ValueError`` when an input column would overwrite a column pixelmill writes.

    Input columns named like a canonical field (``seed``, ``width``, ...) are
    read as that field even when ``input.columns`` does not map them.
    """
    mapped = set(columns.overrides().values())
    readable = set(ColumnMap.model_fields)
    clashes = sorted(c for c in input_columns if c in RESERVED_COLUMNS and c not in mapped and c not in readable)
    if clashes:
        raise ValueError(
            f"input columns {clashes} clash with pixelmill's output columns; "
            "map them in input.columns or rename them"
        )


def _is_missing(value: Any) -> bool:
    """Null, or empty/whitespace-only text (an empty CSV cell)."""
    return value is None or (isinstance(value, str) and not value.strip())


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _utf8(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) escaped as ``\\udXXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_utf8(text: str, name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{name} is not valid Unicode text ({error.reason}: {text[error.start]!r} at position {error.start})"
        ) from None


def _decimal(value: Any, name: str) -> decimal.Decimal:
    """Parse a number written as text exactly."""
    text = value.strip()
    if not _NUMBER_TEXT.fullmatch(text):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return decimal.Decimal(text)


def _number(value: Any, name: str, *, integer: bool) -> float | int:
    """Return ``value`` as an exact ``int`` (``integer``) or a finite ``float``; ``ValueError`` says why not.

    Accepts Python numbers (``int`` of any size, ``float``, ``Decimal``, numpy scalars) and
    numbers written as text (see the module's rules); never rounds an integer through float64.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Number, decimal.Decimal, str)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, str):
        number: Any = _decimal(value, name)
    elif isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, (decimal.Decimal, numbers.Real)):
        number = value
    else:  # complex
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(number, decimal.Decimal):
        if not number.is_finite():
            raise ValueError(f"{name} must be finite, got {value!r}")
        if number and number.adjusted() > _MAX_DIGITS:
            raise ValueError(f"{name} is out of range, got {value!r}")
    elif not isinstance(number, int) and not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if integer:
        if isinstance(number, int):
            return number
        if isinstance(number, decimal.Decimal):
            if number != number.to_integral_value():
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            return int(number)
        as_float = float(number)
        if not as_float.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(as_float)
    try:
        result = float(number)
    except OverflowError:
        raise ValueError(f"{name} is out of range, got {value!r}") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} is out of range, got {value!r}")
    return result


def _row_settings(raw: dict[str, Any], defaults: GenerationDefaults) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name in schema.ROW_SETTINGS:
        value = raw.get(name)
        if _is_missing(value):
            settings[name] = getattr(defaults, name)
            continue
        settings[name] = _number(value, name, integer=name in _INT_FIELDS)
    for name in _INT_FIELDS:
        if settings[name] <= 0:
            raise ValueError(f"{name} must be positive, got {settings[name]}")
        if settings[name] >= _INT_LIMIT:
            raise ValueError(f"{name} must be below 2**63, got {settings[name]}")
    for name in (schema.WIDTH, schema.HEIGHT):
        if settings[name] % 8:
            raise ValueError(f"{name} must be a multiple of 8, got {settings[name]}")
    if settings[schema.GUIDANCE] < 0:
        raise ValueError(f"guidance must be >= 0, got {settings[schema.GUIDANCE]}")
    return settings


def _row_id(raw: dict[str, Any]) -> str:
    value = raw.get(schema.ID)
    if _is_missing(value) or _is_nan(value):
        return f"{raw.get(schema.SOURCE)}#{raw.get(schema.SOURCE_ROW)}"
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")  # undecodable bytes -> lone surrogates -> an error record
    return value if isinstance(value, str) else str(value)


def _seed(raw: dict[str, Any], job_seed: int, row_id: str) -> int:
    value = raw.get(schema.SEED)
    if _is_missing(value):
        return derive_seed(job_seed, row_id)
    seed = _number(value, "seed", integer=True)
    if not 0 <= seed < SEED_LIMIT:
        shown = seed if abs(seed) < 10**30 else value
        raise ValueError(f"seed must be in [0, 2**63), got {shown!r}")
    return int(seed)


def _images_per_prompt(raw: dict[str, Any], default: int) -> int:
    value = raw.get(schema.IMAGES_PER_PROMPT)
    if _is_missing(value):
        return default
    count = _number(value, schema.IMAGES_PER_PROMPT, integer=True)
    if not 1 <= count <= MAX_IMAGES_PER_PROMPT:
        raise ValueError(f"images_per_prompt must be in [1, {MAX_IMAGES_PER_PROMPT}], got {count}")
    return int(count)


def _raw_input(raw: dict[str, Any], row_id: str, reason: str) -> str:
    """The ``raw_input`` of a rejected row: its canonical inputs as read, so a retry meets the same values.

    A value ``schema.raw_input_text`` has no rule for (a list, a date) keeps the row's reason instead.
    """
    values = {name: raw.get(name) for name in ColumnMap.model_fields}
    values[schema.RAW_INPUT_ERROR] = raw.get(INPUT_ERROR_COLUMN)
    text = schema.raw_input_text(values)
    if text is None:
        text = schema.raw_input_text({schema.ID: row_id, schema.RAW_INPUT_ERROR: reason})
    assert text is not None  # text only
    return text


def _read_fields(
    values: dict[str, list[Any]], raw_inputs: list[Any], index: int
) -> dict[str, Any]:
    """Row ``index``'s fields; an error record's ``raw_input`` (a retry) replaces its canonical inputs."""
    fields = {field: column[index] for field, column in values.items()}
    if raw_inputs[index]:
        read = schema.raw_input_values(raw_inputs[index])
        fields.update({name: read.get(name) for name in ColumnMap.model_fields})
        fields[INPUT_ERROR_COLUMN] = read.get(schema.RAW_INPUT_ERROR)
    return fields


def _prepare_one(
    raw: dict[str, Any], *, defaults: GenerationDefaults, job_seed: int, images_per_prompt: int | None = None,
    template_error: str | None = None,
) -> dict[str, Any]:
    """One raw row (canonical field names) -> its canonical fields; a bad value -> an error record.

    With ``images_per_prompt`` (the job's) the row's own count is resolved too, as
    ``IMAGES_PER_PROMPT_COLUMN`` (1 on an error record). ``template_error``: why the job's
    prompt template could not fill this row (the row becomes an error record with that reason).
    """
    row_id = _row_id(raw)
    prompt = raw.get(schema.PROMPT)
    negative = raw.get(schema.NEGATIVE_PROMPT)
    out: dict[str, Any] = {
        schema.ID: row_id,
        schema.PROMPT: prompt if isinstance(prompt, str) else ("" if _is_missing(prompt) else str(prompt)),
        schema.NEGATIVE_PROMPT: defaults.negative_prompt if negative is None else str(negative),
        schema.STATUS: Status.OK.value,
        schema.STAGE: "",
        schema.ERROR: "",
        schema.RAW_INPUT: "",
    }
    try:
        if raw.get(INPUT_ERROR_COLUMN) is not None:
            raise ValueError(str(raw[INPUT_ERROR_COLUMN]) or "the reader could not read this row")
        if template_error is not None:
            raise ValueError(template_error)
        _check_utf8(row_id, "id")
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be text, got {'nothing' if prompt is None else type(prompt).__name__}")
        _check_utf8(prompt, "prompt")
        if not prompt.strip():
            raise ValueError("prompt is empty")
        _check_utf8(out[schema.NEGATIVE_PROMPT], "negative_prompt")
        settings = _row_settings(raw, defaults)
        seed = _seed(raw, job_seed, row_id)
        out.update(settings)
        out[schema.SEED] = seed
        if images_per_prompt is not None:
            out[IMAGES_PER_PROMPT_COLUMN] = _images_per_prompt(raw, images_per_prompt)
    except ValueError as error:
        out.update({schema.STATUS: Status.ERROR.value, schema.STAGE: schema.INPUT_STAGE, schema.ERROR: str(error),
                    schema.RAW_INPUT: _raw_input(raw, row_id, str(error))})
        # The typed columns need values; the record's ``raw_input`` keeps what was read.
        for name in schema.ROW_SETTINGS:
            out[name] = getattr(defaults, name)
        out[schema.SEED] = derive_seed(job_seed, row_id)
        if images_per_prompt is not None:
            out[IMAGES_PER_PROMPT_COLUMN] = 1
    # A fresh row is its own parent; a retried fan-out sample (``retry-errors``) keeps its record's.
    parent, index = raw.get(schema.PARENT_ID), raw.get(schema.IMAGE_INDEX)
    out[schema.PARENT_ID] = parent if isinstance(parent, str) else row_id
    out[schema.IMAGE_INDEX] = index if isinstance(index, int) else 0
    for name in (schema.ID, schema.PROMPT, schema.NEGATIVE_PROMPT, schema.ERROR, schema.PARENT_ID):
        out[name] = _utf8(out[name])
    return out


# The canonical field each template key fills.
_TEMPLATE_FIELDS = {"prompt_template": schema.PROMPT, "negative_prompt_template": schema.NEGATIVE_PROMPT}


def _filled(batch: pa.Table, templates: tuple[Template, ...]) -> list[tuple[dict[str, str | None], str | None]]:
    """Each row's templated fields (``{canonical field: text}``) and the first template's reason it failed, or None.

    A field whose template fails is None (so the record's ``raw_input`` holds no half-made prompt).
    """
    names = {name for template in templates for name in template.fields}
    columns = {name: batch.column(name).to_pylist() for name in names if name in batch.column_names}
    rows: list[tuple[dict[str, str | None], str | None]] = []
    for index in range(batch.num_rows):
        values = {name: column[index] for name, column in columns.items()}
        texts: dict[str, str | None] = {}
        reason = None
        for template in templates:
            try:
                texts[_TEMPLATE_FIELDS[template.key]] = template.fill(values)
            except ValueError as error:
                texts[_TEMPLATE_FIELDS[template.key]] = None
                reason = reason or str(error)
        rows.append((texts, reason))
    return rows


def prepare_rows(
    batch: pa.Table, *, columns: ColumnMap, defaults: GenerationDefaults, job_seed: int,
    images_per_prompt: int | None = None, templates: tuple[Template, ...] = (),
) -> pa.Table:
    """Map a batch of raw input rows to canonical rows; other columns pass through unchanged.

    Args:
        batch: raw rows with ``source`` and ``source_row`` from the reader (a pyarrow
            table: ``map_batches(..., batch_format="pyarrow")``).
        columns: which input column holds each canonical field.
        defaults: job-level values for rows that do not override them.
        job_seed: the job's seed, mixed with row ids to derive row seeds.
        images_per_prompt: the job's images per prompt; when given, each row's own count
            is checked and written as ``IMAGES_PER_PROMPT_COLUMN`` for ``pipelines.fanout``.
        templates: the job's prompt templates (``JobSpec.templates``): each fills its field
            (``prompt``/``negative_prompt``) from the row's columns, over any prompt column.

    Returns:
        The canonical columns (``schema.CANONICAL_COLUMNS``, typed as ``_CANONICAL_TYPES``),
        ``IMAGES_PER_PROMPT_COLUMN`` when asked for, then every other input column as the
        same Arrow column.
    """
    sources = {name: columns.overrides().get(name, name) for name in ColumnMap.model_fields}
    sources[INPUT_ERROR_COLUMN] = INPUT_ERROR_COLUMN
    sources[schema.SOURCE] = schema.SOURCE
    sources[schema.SOURCE_ROW] = schema.SOURCE_ROW
    sources[schema.PARENT_ID] = schema.PARENT_ID  # on retried records only (reserved input names)
    sources[schema.IMAGE_INDEX] = schema.IMAGE_INDEX
    names = batch.column_names
    values = {
        field: batch.column(column).to_pylist() if column in names else [None] * batch.num_rows
        for field, column in sources.items()
    }
    # Error records read back by retry-errors carry their raw inputs (``schema.RAW_INPUT``).
    raw_inputs = batch.column(schema.RAW_INPUT).to_pylist() if schema.RAW_INPUT in names else [None] * batch.num_rows
    filled = _filled(batch, templates)
    prepared = [
        _prepare_one({**_read_fields(values, raw_inputs, i), **filled[i][0]}, defaults=defaults, job_seed=job_seed,
                     images_per_prompt=images_per_prompt, template_error=filled[i][1])
        for i in range(batch.num_rows)
    ]
    types = dict(_CANONICAL_TYPES)
    if images_per_prompt is not None:
        types[IMAGES_PER_PROMPT_COLUMN] = pa.int64()
    arrays: list[pa.Array | pa.ChunkedArray] = [
        pa.array([row[name] for row in prepared], type=kind) for name, kind in types.items()
    ]
    fields = [pa.field(name, kind) for name, kind in types.items()]
    consumed = {*types, *ColumnMap.model_fields, *columns.overrides().values(), INPUT_ERROR_COLUMN}
    for index, name in enumerate(names):
        if name not in consumed:
            arrays.append(batch.column(index))
            fields.append(batch.schema.field(index))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
