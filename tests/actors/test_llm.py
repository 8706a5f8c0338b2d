"""The LLM stage on the built-in tiny LM, called the way Ray calls it: columns, dedupe, retries, errors."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from actors.llm import LlmStage
from pipelines import schema
from pipelines.rows import llm_retry_seed
from pipelines.spec import LlmSpec, ModelSpec, StageSpec


def _batch(prompts: list[str], llm_seeds: list[int], statuses: list[str] | None = None) -> dict[str, np.ndarray]:
    statuses = statuses or ["ok"] * len(prompts)
    return {
        "id": np.array([f"r{i}" for i in range(len(prompts))], dtype=object),
        "prompt": np.array(prompts, dtype=object),
        "seed": np.arange(100, 100 + len(prompts)),
        "status": np.array(statuses, dtype=object),
        "stage": np.array(["" if s == "ok" else "input" for s in statuses], dtype=object),
        "error": np.array(["" if s == "ok" else "bad row" for s in statuses], dtype=object),
        schema.VARIATION_COLUMN: np.arange(len(prompts)) % 2,
        schema.LLM_SEED_COLUMN: np.array(llm_seeds),
    }


@pytest.fixture(scope="module")
def make_stage(model_cache: str):
    def make(**llm: Any) -> LlmStage:
        spec = LlmSpec(model=ModelSpec(uri="builtin:tiny-lm", cache_dir=model_cache), **{"max_new_tokens": 8, **llm})
        return LlmStage(llm=spec, stage=StageSpec(micro_batch_size=1), image_model=ModelSpec(cache_dir=model_cache),
                        seed_of=llm_retry_seed)
    return make


@pytest.fixture(scope="module")
def stage(make_stage) -> LlmStage:
    return make_stage()


def test_the_llm_text_replaces_the_prompt_and_the_stage_writes_its_columns(stage: LlmStage) -> None:
    out = stage(_batch(["a red cat", "a blue dog"], [7, 8]))
    assert list(out["source_prompt"]) == ["a red cat", "a blue dog"]
    assert all(p and p not in ("a red cat", "a blue dog") for p in out["prompt"])
    assert list(out["status"]) == ["ok", "ok"]
    assert list(out["variation_index"]) == [0, 1] and list(out["llm_seed"]) == [7, 8]
    assert schema.VARIATION_COLUMN not in out and schema.LLM_SEED_COLUMN not in out
    assert set(out["llm_model"]) == {"builtin:tiny-lm"} and len(out["llm_model_hash"][0]) == 16
    sampling = json.loads(out["llm_sampling"][0])
    assert sampling["max_new_tokens"] == 8 and sampling["instruction"] == "{prompt}" and sampling["do_sample"]
    assert (out["llm_s"] > 0).all()
    assert set(schema.LLM.adds) <= set(out)
    again = stage(_batch(["a red cat", "a blue dog"], [7, 8]))
    assert list(again["prompt"]) == list(out["prompt"])  # same prompt and seed: same text


def test_rows_of_one_prompt_and_seed_share_one_draw(stage: LlmStage) -> None:
    before = stage.drawn_texts
    out = stage(_batch(["a red cat"] * 3 + ["a red cat"], [5, 5, 5, 6]))
    assert stage.drawn_texts - before == 2  # (prompt, llm seed) pairs, not rows
    assert out["prompt"][0] == out["prompt"][1] == out["prompt"][2] != out["prompt"][3]
    alone = stage(_batch(["a red cat"], [6]))
    assert alone["prompt"][0] == out["prompt"][3]  # the same text whatever its batch-mates


def test_rows_already_in_error_pass_untouched(stage: LlmStage) -> None:
    before = stage.drawn_texts
    out = stage(_batch(["a red cat", "a blue dog"], [1, 2], ["error", "ok"]))
    assert stage.drawn_texts - before == 1
    assert out["prompt"][0] == "a red cat" and out["status"][0] == "error"
    assert out["stage"][0] == "input" and out["error"][0] == "bad row"
    assert out["source_prompt"][0] == "a red cat" and out["llm_seed"][0] == 1


def test_a_failed_check_is_drawn_again_with_the_next_seed(make_stage, stage: LlmStage) -> None:
    second = stage.writer.write(["a red cat"], [llm_retry_seed(9, 1)], max_new_tokens=8)[0]
    first = stage.writer.write(["a red cat"], [9], max_new_tokens=8)[0]
    assert first != second
    retrying = make_stage(constraint=re.escape(second), retries=1)
    out = retrying(_batch(["a red cat"], [9]))
    assert out["status"][0] == "ok" and out["prompt"][0] == second
    assert out["llm_seed"][0] == 9  # the variation's seed; the redraw's seed derives from it


def test_a_row_whose_draws_all_fail_is_an_error_record_saying_why(make_stage, stage: LlmStage) -> None:
    second = stage.writer.write(["a red cat"], [llm_retry_seed(9, 1)], max_new_tokens=8)[0]
    strict = make_stage(constraint=re.escape(second), retries=0)
    out = strict(_batch(["a red cat", "a blue dog"], [9, 9]))
    assert list(out["status"]) == ["error", "error"] and set(out["stage"]) == {"llm"}
    assert "does not match llm.constraint" in out["error"][0] and "(1 draw)" in out["error"][0]
    assert list(out["prompt"]) == ["a red cat", "a blue dog"]  # the prompt as read stays


def test_a_text_longer_than_the_image_models_window_is_an_error(make_stage) -> None:
    long = make_stage(max_new_tokens=120, retries=1)
    out = long(_batch(["a red cat"], [4]))
    assert out["status"][0] == "error" and out["stage"][0] == "llm"
    assert "text window of the image model (77)" in out["error"][0] and "(2 draws)" in out["error"][0]
