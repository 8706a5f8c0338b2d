"""Turn raw input rows into pixelmill's canonical row: id, seed, generation settings, status.

Runs as a Ray Data ``map_batches`` task on pandas batches.  Bad values never
raise: the row gets ``status="error"``, ``stage="input"`` and a reason, and
flows on so that it is written to the shard's Parquet like every other row.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pandas as pd

from pipelines import schema
from pipelines.schema import INPUT_ERROR_COLUMN, OUTPUT_COLUMNS, RESERVED_COLUMNS, Status
from pipelines.spec import ColumnMap, GenerationDefaults

# INPUT_ERROR_COLUMN, OUTPUT_COLUMNS and RESERVED_COLUMNS live in ``pipelines.schema``; re-exported here.
__all__ = [
    "INPUT_ERROR_COLUMN", "OUTPUT_COLUMNS", "RESERVED_COLUMNS",
    "derive_seed", "prepare_rows", "check_passthrough_columns",
]

_INT_FIELDS = (schema.WIDTH, schema.HEIGHT, schema.STEPS)
_SEED_MODULUS = 2**32


def derive_seed(job_seed: int, row_id: str) -> int:
    """Return a row's seed from the job seed and the row id (stable across runs and machines)."""
    digest = hashlib.sha256(f"{job_seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


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
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _number(value: Any, name: str, *, integer: bool) -> float | int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if integer:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(number)
    return number


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
    for name in (schema.WIDTH, schema.HEIGHT):
        if settings[name] % 8:
            raise ValueError(f"{name} must be a multiple of 8, got {settings[name]}")
    if settings[schema.GUIDANCE] < 0:
        raise ValueError(f"guidance must be >= 0, got {settings[schema.GUIDANCE]}")
    return settings


def _prepare_one(raw: dict[str, Any], *, defaults: GenerationDefaults, job_seed: int) -> dict[str, Any]:
    row_id = raw.get(schema.ID)
    row_id = f"{raw[schema.SOURCE]}#{raw[schema.SOURCE_ROW]}" if _is_missing(row_id) else str(row_id)
    prompt = raw.get(schema.PROMPT)
    negative = raw.get(schema.NEGATIVE_PROMPT)
    out: dict[str, Any] = {
        schema.ID: row_id,
        schema.PROMPT: prompt if isinstance(prompt, str) else ("" if _is_missing(prompt) else str(prompt)),
        schema.NEGATIVE_PROMPT: defaults.negative_prompt if _is_missing(negative) else str(negative),
        schema.STATUS: Status.OK.value,
        schema.STAGE: "",
        schema.ERROR: "",
    }
    try:
        if not _is_missing(raw.get(INPUT_ERROR_COLUMN)):
            raise ValueError(str(raw[INPUT_ERROR_COLUMN]))
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be text, got {'nothing' if _is_missing(prompt) else type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError("prompt is empty")
        out.update(_row_settings(raw, defaults))
        seed = raw.get(schema.SEED)
        out[schema.SEED] = derive_seed(job_seed, row_id) if _is_missing(seed) else _number(seed, "seed", integer=True)
        if not 0 <= out[schema.SEED] < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {out[schema.SEED]}")
    except ValueError as error:
        out.update({schema.STATUS: Status.ERROR.value, schema.STAGE: schema.INPUT_STAGE, schema.ERROR: str(error)})
        out.setdefault(schema.SEED, derive_seed(job_seed, row_id))
        for name in schema.ROW_SETTINGS:
            out.setdefault(name, getattr(defaults, name))
    return out


def prepare_rows(
    batch: pd.DataFrame, *, columns: ColumnMap, defaults: GenerationDefaults, job_seed: int
) -> pd.DataFrame:
    """Map a batch of raw input rows to canonical rows; other columns pass through.

    Args:
        batch: raw rows with ``source`` and ``source_row`` from the reader.
        columns: which input column holds each canonical field.
        defaults: job-level values for rows that do not override them.
        job_seed: the job's seed, mixed with row ids to derive row seeds.
    """
    renames = {column: name for name, column in columns.overrides().items()}
    raw = batch.rename(columns=renames)
    canonical = pd.DataFrame(
        [_prepare_one(row, defaults=defaults, job_seed=job_seed) for row in raw.to_dict("records")],
        index=raw.index,
    )
    canonical = canonical.astype(
        {schema.SEED: "int64", **{name: "int64" for name in _INT_FIELDS}, schema.GUIDANCE: "float64"}
    )
    consumed = set(canonical.columns) | set(ColumnMap.model_fields) | {INPUT_ERROR_COLUMN}
    passthrough = raw.drop(columns=[c for c in raw.columns if c in consumed])
    return pd.concat([canonical, passthrough], axis=1).reset_index(drop=True)
