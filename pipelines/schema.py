"""pixelmill's row schema in one place: column names, row statuses, and the column sets.

Every module that reads or writes a row's columns takes the names from here; the sets
(``RESERVED_COLUMNS``, ``OUTPUT_COLUMNS``, ``STAGE_SECONDS``, ...) are derived from the
per-stage declarations below (:data:`STAGES`), never kept by hand.  A stage actor
(``actors.base.Stage``) names its :class:`StageColumns` as its ``contract``.

This module imports nothing from ``actors``/``models``, nor Ray, torch or pandas.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

import numpy as np

__all__ = [
    "Status", "StageColumns",
    # internal columns
    "INTERNAL_PREFIX", "EMBED_PREFIX", "IMAGE_COLUMN", "INPUT_ERROR_COLUMN", "LINE_COLUMN", "is_internal",
    "UTILIZATION_PREFIX", "IMAGES_PER_PROMPT_COLUMN", "VARIATION_COLUMN", "LLM_SEED_COLUMN",
    # column names
    "KEY", "ID", "PROMPT", "NEGATIVE_PROMPT", "SEED", "WIDTH", "HEIGHT", "STEPS", "GUIDANCE",
    "STATUS", "STAGE", "ERROR", "RAW_INPUT", "PARENT_ID", "IMAGE_INDEX", "IMAGES_PER_PROMPT",
    "SOURCE", "SOURCE_ROW", "SHARD",
    "PROMPT_TOKENS", "PROMPT_TRUNCATED", "NEGATIVE_PROMPT_TRUNCATED", "MODEL", "MODEL_HASH", "SCHEDULER", "PIPELINE",
    "MICRO_BATCH", "shape_label",
    "STYLE", "STYLE_HASH", "STYLE_BACKEND", "STYLE_STRENGTH", "STYLE_PRESERVE_COLOR",
    "CLIP_SCORE", "IMAGE_EMBEDDING", "IMAGE", "SHA256", "IMAGE_FORMAT",
    "ATTEMPTS", "ATTEMPT_SEEDS", "ATTEMPT_SCORES", "CHOSEN_ATTEMPT", "LIST_ITEM_TYPES",
    "SOURCE_PROMPT", "VARIATION_INDEX", "LLM_MODEL", "LLM_MODEL_HASH", "LLM_SAMPLING", "LLM_SEED",
    # stages
    "INPUT_STAGE", "DUPLICATE_STAGE", "LLM", "ENCODE", "GENERATE", "STYLE_STAGE", "SCORE", "IMAGE_ENCODE", "STAGES",
    "STAGE_SECONDS",
    # error records' reason codes
    "reason_code",
    # column sets
    "ROW_SETTINGS", "STATUS_COLUMNS", "SOURCE_COLUMNS", "CANONICAL_COLUMNS", "SINK_COLUMNS", "TAR_ONLY_COLUMNS",
    "OUTPUT_COLUMNS", "RESERVED_COLUMNS", "NOT_IN_SAMPLE_JSON",
    # the sample JSON; an error record's raw input
    "json_value", "RAW_INPUT_ERROR", "raw_input_text", "raw_input_values",
]


class Status(StrEnum):
    """A row's ``status``.  Members are ``str``: they compare equal to, and are written as, the bare strings."""

    OK = "ok"  # so far every stage succeeded; the sink writes its sample
    ERROR = "error"  # a stage failed on it (``stage``/``error`` say which and why)
    FILTERED = "filtered"  # a check dropped it on purpose (safety checker, ``score.min_score``)
    # The run's budget was spent before the row's first model step (``actors.budget``): nothing was
    # computed, the sink writes it nowhere (no shard, no errors table) and a later run does it.
    DEFERRED = "deferred"


# --- internal columns: travel between stages, never written ------------------------------------
INTERNAL_PREFIX = "_pm_"
EMBED_PREFIX = INTERNAL_PREFIX + "emb_"  # text embeddings, encode -> generate: ``_pm_emb_<name>``
IMAGE_COLUMN = INTERNAL_PREFIX + "image"  # the decoded ``uint8 [H, W, 3]`` image, generate -> image encoding
INPUT_ERROR_COLUMN = INTERNAL_PREFIX + "input_error"  # set by ``pipelines.sources`` on rows it could not parse
LINE_COLUMN = INTERNAL_PREFIX + "line"  # a JSON Lines row's line number while ``pipelines.sources`` reads it
# A row's images per prompt as ``pipelines.rows`` resolved it, until ``pipelines.fanout`` makes the samples.
IMAGES_PER_PROMPT_COLUMN = INTERNAL_PREFIX + "images_per_prompt"
# A sample's prompt variation and the seed its LLM text is drawn with, from ``pipelines.fanout`` (jobs
# with ``llm``) to the LLM stage, which writes them as ``variation_index`` and ``llm_seed``.
VARIATION_COLUMN = INTERNAL_PREFIX + "variation_index"
LLM_SEED_COLUMN = INTERNAL_PREFIX + "llm_seed"
# A model pool's timing per row (``pipelines.utilization``): model actors -> the sink, which sums and drops them.
UTILIZATION_PREFIX = INTERNAL_PREFIX + "util:"


def is_internal(column: str) -> bool:
    """Whether ``column`` is one of pixelmill's internal (``_pm_``) columns."""
    return column.startswith(INTERNAL_PREFIX)


# --- canonical row (``pipelines.rows``) -----------------------------------------------------------
ID = "id"
PROMPT = "prompt"
NEGATIVE_PROMPT = "negative_prompt"
SEED = "seed"
WIDTH = "width"
HEIGHT = "height"
STEPS = "steps"
GUIDANCE = "guidance"
STATUS = "status"
STAGE = "stage"
ERROR = "error"
# An input-stage error record's canonical inputs as read (``raw_input_text``); "" on every other row.
RAW_INPUT = "raw_input"
# Fan-out (``pipelines.fanout``): the input row's id, and which of its images a sample is (k of ``<id>/<k>``).
PARENT_ID = "parent_id"
IMAGE_INDEX = "image_index"
IMAGES_PER_PROMPT = "images_per_prompt"  # an input row's own image count (``input.columns.images_per_prompt``)
# --- added by the reader (``pipelines.sources``) --------------------------------------------------
SOURCE = "source"
SOURCE_ROW = "source_row"
# --- added by the stages --------------------------------------------------------------------------
PROMPT_TOKENS = "prompt_tokens"
PROMPT_TRUNCATED = "prompt_truncated"
NEGATIVE_PROMPT_TRUNCATED = "negative_prompt_truncated"
MODEL = "model"
MODEL_HASH = "model_hash"
SCHEDULER = "scheduler"
PIPELINE = "pipeline"
# Rows per forward pass the row's image was drawn in (``micro_batch_size``, or what ``auto`` picked).
MICRO_BATCH = "micro_batch"
STYLE = "style"
STYLE_HASH = "style_hash"
STYLE_BACKEND = "style_backend"
STYLE_STRENGTH = "style_strength"
STYLE_PRESERVE_COLOR = "style_preserve_color"
CLIP_SCORE = "clip_score"
# The score model's L2-normalised image embedding (list<float32>; null on rows without an image):
# what ``pipelines.diversity`` measures near duplicates and spread with.
IMAGE_EMBEDDING = "image_embedding"
# The regenerate loop's record of every scored row (``actors.regenerate``; one attempt without the loop).
ATTEMPTS = "attempts"  # images drawn for the row (0: none, the row failed before generate)
ATTEMPT_SEEDS = "attempt_seeds"  # each attempt's seed (``pipelines.rows.attempt_seed``), list<int64>
ATTEMPT_SCORES = "attempt_scores"  # each attempt's clip_score (NaN: that image was not scored), list<double>
CHOSEN_ATTEMPT = "chosen_attempt"  # the 0-based attempt whose image and columns the row holds (-1: none)
# The LLM prompt stage (``actors.llm``): the prompt as read (``prompt`` then holds the LLM's text),
# which variation of its input row a sample is, the LLM, its settings (JSON text) and the text's seed.
SOURCE_PROMPT = "source_prompt"
VARIATION_INDEX = "variation_index"
LLM_MODEL = "llm_model"
LLM_MODEL_HASH = "llm_model_hash"
LLM_SAMPLING = "llm_sampling"
LLM_SEED = "llm_seed"
IMAGE = "image"  # the encoded image bytes: the tar member, not a Parquet column
SHA256 = "sha256"
IMAGE_FORMAT = "image_format"
# --- added by the sink (``pipelines.sink``) -------------------------------------------------------
KEY = "key"
SHARD = "shard"


@dataclass(frozen=True)
class StageColumns:
    """What one stage declares: its name and the columns it adds to every row.

    Attributes:
        name: the stage's name: the value of ``stage`` on rows it fails, and its
            fault-injection point ``stage:<name>``.
        adds: columns it writes on every row (pixelmill's own: reserved, and dropped
            when error records become input again).
        echoes: per-row settings it writes back as resolved (``style``, ...): an input
            column of that name is the setting, so these are neither reserved nor dropped.
        tar_only: columns it writes that go to the tar sample, not to the Parquet.
    """

    name: str
    adds: tuple[str, ...] = ()
    echoes: tuple[str, ...] = ()
    tar_only: tuple[str, ...] = ()

    @property
    def seconds(self) -> str:
        """The stage's timing column: seconds per row (batch time / rows in the batch)."""
        return f"{self.name}_s"


INPUT_STAGE = "input"  # the ``stage`` of rows ``pipelines.rows`` rejects (no actor, no timing column)
# The ``stage`` of a later occurrence of an id (``pipelines.dedupe``); with ``source``/``source_row``
# it is also what tells a committed duplicate record from the id's own row on resume.
DUPLICATE_STAGE = "duplicate"
LLM = StageColumns("llm", adds=(SOURCE_PROMPT, VARIATION_INDEX, LLM_MODEL, LLM_MODEL_HASH, LLM_SAMPLING, LLM_SEED))
ENCODE = StageColumns("encode", adds=(PROMPT_TOKENS, PROMPT_TRUNCATED, NEGATIVE_PROMPT_TRUNCATED))
GENERATE = StageColumns("generate", adds=(MODEL, MODEL_HASH, SCHEDULER, PIPELINE, MICRO_BATCH))
STYLE_STAGE = StageColumns(
    "style", adds=(STYLE_HASH, STYLE_BACKEND), echoes=(STYLE, STYLE_STRENGTH, STYLE_PRESERVE_COLOR)
)
SCORE = StageColumns(
    "score", adds=(CLIP_SCORE, IMAGE_EMBEDDING, ATTEMPTS, ATTEMPT_SEEDS, ATTEMPT_SCORES, CHOSEN_ATTEMPT)
)
IMAGE_ENCODE = StageColumns("image_encode", adds=(SHA256, IMAGE_FORMAT), tar_only=(IMAGE,))
# Every stage, in pipeline order (llm, style and score run only when the job has them).
STAGES: tuple[StageColumns, ...] = (LLM, ENCODE, GENERATE, STYLE_STAGE, SCORE, IMAGE_ENCODE)
# Per-row seconds the stages write, in pipeline order.
STAGE_SECONDS: tuple[str, ...] = tuple(stage.seconds for stage in STAGES)

# --- column sets ----------------------------------------------------------------------------------
# Generation settings a row may set itself (else the job's defaults).
ROW_SETTINGS: tuple[str, ...] = (WIDTH, HEIGHT, STEPS, GUIDANCE)
# Where a row stands: its status, the stage that failed it and why.
STATUS_COLUMNS: tuple[str, ...] = (STATUS, STAGE, ERROR)
SOURCE_COLUMNS: tuple[str, ...] = (SOURCE, SOURCE_ROW)
# The columns ``pipelines.rows.prepare_rows`` writes; input columns pass through after them.
CANONICAL_COLUMNS: tuple[str, ...] = (
    ID, PROMPT, NEGATIVE_PROMPT, *STATUS_COLUMNS, RAW_INPUT, *ROW_SETTINGS, SEED, PARENT_ID, IMAGE_INDEX
)
SINK_COLUMNS: tuple[str, ...] = (KEY, SHARD)
# Written to the tar sample (as ``<key>.<format>``), left out of the Parquet and the sample JSON.
TAR_ONLY_COLUMNS = frozenset(column for stage in STAGES for column in stage.tar_only)
_STAGE_OUTPUTS = frozenset(column for stage in STAGES for column in (*stage.adds, stage.seconds))
# Item types of the stages' list columns: the sink casts them, so a block whose lists are all
# empty (Arrow infers list<null>) still writes the output's one schema.
LIST_ITEM_TYPES: dict[str, str] = {ATTEMPT_SEEDS: "int64", ATTEMPT_SCORES: "float64"}
# Columns the stages and the sink add; dropped when error records become input again.
OUTPUT_COLUMNS = frozenset({*SINK_COLUMNS, *STATUS_COLUMNS, *_STAGE_OUTPUTS})
# Columns pixelmill writes itself; input columns with these names must be mapped.
RESERVED_COLUMNS = frozenset({*CANONICAL_COLUMNS, *SOURCE_COLUMNS, *OUTPUT_COLUMNS})
# Parquet columns left out of the tar sample's JSON (and the dataset card's features): the
# image bytes, the timings (so a rerun's samples are byte-identical), ``raw_input`` ("" on ok rows)
# and the image embedding (hundreds of floats per sample; the Parquet holds it).
# ``micro_batch`` too: how the image was computed, not what it is (the sample JSON predates it).
NOT_IN_SAMPLE_JSON = frozenset({*TAR_ONLY_COLUMNS, *STAGE_SECONDS, RAW_INPUT, IMAGE_EMBEDDING, MICRO_BATCH})


def shape_label(width: int, height: int, steps: int, guidance: float) -> str:
    """Return the name of a generate shape in records: ``"512x512/1 steps/guidance 0.0"``."""
    return f"{width}x{height}/{steps} steps/guidance {float(guidance)}"


# --- how each Arrow type travels into the sample JSON -------------------------------------------

def json_value(value: Any) -> Any:
    """Return a sample-JSON value for one Parquet value, without loss, by one rule per type.

    - integers of any size stay JSON integers (Python's ``json`` writes them exactly);
    - floats stay numbers; NaN and the infinities, which JSON cannot hold, become the strings
      ``"NaN"``, ``"Infinity"``, ``"-Infinity"``;
    - decimals become their exact string (``"12.30"``);
    - bytes become base64 text (``{"base64": "AP8="}``, so they never read as a string value);
    - dates, times and timestamps become ISO 8601 strings; durations become seconds (a number);
    - lists become JSON arrays and structs JSON objects, element by element; a map becomes an
      object when its keys are strings, else an array of ``[key, value]`` pairs;
    - numpy scalars and arrays (from tensor columns) become the matching Python values.

    Raises:
        TypeError: a value of a type no Arrow column holds.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = list(value)
        # pyarrow hands a map as a list of (key, value) tuples
        if items and all(isinstance(item, tuple) and len(item) == 2 for item in items):
            if all(isinstance(key, str) for key, _ in items):
                return {key: json_value(item) for key, item in items}
            return [[json_value(key), json_value(item)] for key, item in items]
        return [json_value(item) for item in items]
    if isinstance(value, np.ndarray):
        return json_value(value.tolist())
    if isinstance(value, np.generic):
        return json_value(value.item())
    raise TypeError(f"no sample-JSON rule for a {type(value).__name__}")


# --- an input-stage error record's raw input ----------------------------------------------------
# The key of the reader's own reason (a JSON Lines line that is not JSON) in ``raw_input``.
RAW_INPUT_ERROR = "input_error"
_RAW_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _raw_json(value: Any) -> Any:
    """One raw value as JSON that reads back as the same Python value and type (see ``raw_input_text``)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": json_value(value)}
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"no raw-input rule for a {type(value).__name__}")


def _raw_value(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    (tag, text), = item.items()
    if tag == "float":
        return _RAW_FLOATS[text]
    if tag == "decimal":
        return Decimal(text)
    return base64.b64decode(text)


def raw_input_text(values: dict[str, Any]) -> str | None:
    """Return the ``raw_input`` text of an error record: its canonical inputs as read, as JSON.

    One JSON object, ``{field: value}`` for each canonical input that is not null (and the
    reader's reason as :data:`RAW_INPUT_ERROR`). Text, whole numbers, finite floats and
    booleans are JSON values of their own type (``"63"`` stays text, ``63`` a number, ``64.0``
    a float); a non-finite float is ``{"float": "NaN"}``, a decimal ``{"decimal": "12.30"}``,
    bytes ``{"base64": ...}``. Written ASCII-only, so a lone surrogate survives as ``\\ud800``.

    Returns:
        the text, or None when a value has none of these types (a list, a date): the caller
        then keeps the row's reason as :data:`RAW_INPUT_ERROR` instead.
    """
    try:
        return json.dumps({k: _raw_json(v) for k, v in values.items() if v is not None}, sort_keys=True)
    except TypeError:
        return None


def raw_input_values(text: str) -> dict[str, Any]:
    """Return the values :func:`raw_input_text` wrote, each of its own type again."""
    return {key: _raw_value(item) for key, item in json.loads(text).items()}


# The values inside an error message, most specific first: quoted text, URIs, paths, numbers.
_REASON_VALUES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"'[^']*'"), "'…'"),
    (re.compile(r'"[^"]*"'), '"…"'),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:;,)]+"), "URI"),
    (re.compile(r"(?<![\w.])/[^\s:;,)]+"), "PATH"),
    (re.compile(r"(?<![\w.])\d+x\d+(?![\w.])"), "NxN"),  # a size: 48x48
    (re.compile(r"(?<![A-Za-z_])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"), "N"),
)


def reason_code(stage: str, error: str) -> str:
    """Return the stable reason code of an error record: its stage and its message with the values
    taken out, so rows failing for one reason group together whatever their values.

    ``("input", "line 3: column 'prompt' holds a number where the file's other rows hold a string")``
    gives ``"input: line N: column '…' holds a number where the file'…"``; the first line only, at
    most 160 characters. The run summary counts error records by this code and keeps one full
    message of each as its example.
    """
    text = (error or "").strip().split("\n", 1)[0]
    for pattern, placeholder in _REASON_VALUES:
        text = pattern.sub(placeholder, text)
    return f"{stage}: {text[:160]}"
