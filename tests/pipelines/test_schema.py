"""``pipelines.schema``: the derived column sets, the status enum, and that it imports nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines import schema
from pipelines.schema import Status


def test_status_values_are_the_strings_written_to_parquet_and_json() -> None:
    assert [s.value for s in Status] == ["ok", "error", "filtered", "deferred"]
    assert Status.OK == "ok" and f"{Status.ERROR}" == "error" and json.dumps(Status.FILTERED) == '"filtered"'


def test_stage_seconds_follow_the_stages_in_order() -> None:
    assert schema.STAGE_SECONDS == ("llm_s", "encode_s", "generate_s", "style_s", "score_s", "image_encode_s")


def test_column_sets_are_the_ones_pixelmill_writes() -> None:
    stage_columns = {
        "prompt_tokens", "prompt_truncated", "negative_prompt_truncated", "model", "model_hash", "scheduler",
        "pipeline", "micro_batch", "style_hash",
        "style_backend", "clip_score", "image_embedding", "sha256", "image_format", *schema.STAGE_SECONDS,
        "attempts", "attempt_seeds", "attempt_scores", "chosen_attempt",  # the regenerate loop's record
        "source_prompt", "variation_index", "llm_model", "llm_model_hash", "llm_sampling", "llm_seed",  # llm stage
    }
    assert schema.OUTPUT_COLUMNS == {"key", "shard", "status", "stage", "error", *stage_columns}
    assert schema.RESERVED_COLUMNS == {
        *schema.OUTPUT_COLUMNS, "id", "prompt", "negative_prompt", "seed", "width", "height", "steps", "guidance",
        "source", "source_row", "raw_input", "parent_id", "image_index",
    }
    # Per-row style settings may come from the input, and the image bytes never reach the Parquet.
    assert not {"style", "style_strength", "style_preserve_color", "image"} & schema.RESERVED_COLUMNS
    assert schema.TAR_ONLY_COLUMNS == {"image"}
    assert schema.NOT_IN_SAMPLE_JSON == {
        "image", "raw_input", "image_embedding", "micro_batch", *schema.STAGE_SECONDS
    }
    assert schema.shape_label(512, 768, 4, 7) == "512x768/4 steps/guidance 7.0"


def test_internal_columns_share_the_prefix() -> None:
    for name in (schema.EMBED_PREFIX + "x", schema.IMAGE_COLUMN, schema.INPUT_ERROR_COLUMN, schema.LINE_COLUMN):
        assert schema.is_internal(name)
    assert not any(schema.is_internal(c) for c in schema.RESERVED_COLUMNS)


@pytest.mark.slow
def test_imports_no_ray_torch_pandas_actors_or_models() -> None:
    code = (
        "import sys, pipelines.schema; "
        "print([m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'pandas', 'actors', 'models')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
