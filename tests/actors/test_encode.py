"""The encode stage on the real built-in model, called the way Ray calls it: one encoding per distinct prompt."""

from __future__ import annotations

import numpy as np
import pytest

from actors.encode import EMBED_PREFIX, EncodeStage
from pipelines.spec import ModelSpec, StageSpec


def _batch(prompts: list[str], negatives: list[str], statuses: list[str] | None = None) -> dict[str, np.ndarray]:
    statuses = statuses or ["ok"] * len(prompts)
    return {
        "prompt": np.array(prompts, dtype=object),
        "negative_prompt": np.array(negatives, dtype=object),
        "guidance": np.full(len(prompts), 1.0),
        "status": np.array(statuses, dtype=object),
        "stage": np.array(["" if s == "ok" else "input" for s in statuses], dtype=object),
        "error": np.array(["" if s == "ok" else "prompt is empty" for s in statuses], dtype=object),
    }


@pytest.fixture(scope="module")
def stage(model_cache: str) -> EncodeStage:
    return EncodeStage(model=ModelSpec(cache_dir=model_cache), stage=StageSpec(micro_batch_size=2))


def test_images_of_one_prompt_are_encoded_once_with_the_same_bytes(stage: EncodeStage) -> None:
    # three images of "a red circle", two of "a green square" (one with a negative prompt), as fan-out lays them out
    prompts = ["a red circle"] * 3 + ["a green square"] * 2 + ["a red circle"]
    negatives = ["", "", "", "", "blurry", ""]
    before = stage.encoded_rows
    out = stage(_batch(prompts, negatives))
    assert stage.encoded_rows - before == 3  # distinct (prompt, negative) pairs, not 6 rows
    embeds = [key for key in out if key.startswith(EMBED_PREFIX)]
    assert embeds
    for i, (prompt, negative) in enumerate(zip(prompts, negatives, strict=True)):
        alone = stage(_batch([prompt], [negative]))  # no reuse possible: one row
        for key in embeds:
            assert out[key][i].tobytes() == alone[key][0].tobytes(), (i, key)
    negative = EMBED_PREFIX + "negative_prompt_embeds"
    assert out[negative][3].tobytes() != out[negative][4].tobytes()  # another negative prompt: its own encoding
    assert list(out["prompt_tokens"][:3]) == [out["prompt_tokens"][0]] * 3


def test_rows_that_failed_earlier_are_not_encoded(stage: EncodeStage) -> None:
    before = stage.encoded_rows
    out = stage(_batch(["a blue star", "", "a blue star"], ["", "", ""], ["ok", "error", "ok"]))
    assert stage.encoded_rows - before == 1
    assert list(out["status"]) == ["ok", "error", "ok"]
