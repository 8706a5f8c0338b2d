"""The regenerate loop's actor on the real built-in models (shapes-sd, shapes-clip), called the way Ray calls it."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from actors.encode import EncodeStage
from actors.generate import GenerateStage
from actors.regenerate import RegenerateStage
from actors.score import ScoreStage
from pipelines import schema
from pipelines.rows import attempt_seed, derive_seed
from pipelines.spec import ModelSpec, ScoreSpec, StageSpec
from training import world

ROWS = 8


def _batch(prompts: list[str], statuses: list[str]) -> dict[str, np.ndarray]:
    n = len(prompts)
    return {
        schema.ID: np.array([f"r{i}" for i in range(n)], dtype=object),
        schema.PROMPT: np.array(prompts, dtype=object),
        schema.NEGATIVE_PROMPT: np.array([""] * n, dtype=object),
        schema.STATUS: np.array(statuses, dtype=object),
        schema.STAGE: np.array(["" if s == "ok" else "input" for s in statuses], dtype=object),
        schema.ERROR: np.array(["" if s == "ok" else "earlier" for s in statuses], dtype=object),
        schema.SEED: np.array([derive_seed(5, f"r{i}") for i in range(n)], dtype=np.int64),
        schema.WIDTH: np.full(n, 32, dtype=np.int64),
        schema.HEIGHT: np.full(n, 32, dtype=np.int64),
        schema.STEPS: np.full(n, 1, dtype=np.int64),
        schema.GUIDANCE: np.full(n, 1.0),
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = str(tmp_path_factory.mktemp("regen-cache"))
    return {"sd": ModelSpec(uri="builtin:shapes-sd", cache_dir=cache),
            "clip": ModelSpec(uri="builtin:shapes-clip", cache_dir=cache)}


def _loop(models: dict[str, Any], **score: Any) -> RegenerateStage:
    stage = StageSpec(micro_batch_size=2)
    spec = ScoreSpec(model=models["clip"], **score)
    return RegenerateStage(
        before=[(EncodeStage, {"model": models["sd"], "stage": stage})],
        attempt=[(GenerateStage, {"model": models["sd"], "stage": stage}),
                 (ScoreStage, {"score": spec, "stage": stage})],
        after=[],
        score=spec,
        seed_of=attempt_seed,
    )


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_attempt_seeds_are_the_row_seed_then_salted() -> None:
    assert attempt_seed(123, 0) == 123
    seeds = {attempt_seed(123, a) for a in range(1, 50)}
    assert len(seeds) == 49 and 123 not in seeds
    assert attempt_seed(123, 1) == attempt_seed(123, 1) != attempt_seed(124, 1)


def test_best_and_first_passing_choose_by_the_attempt_scores(models: dict[str, Any]) -> None:
    prompts = [text for text, _image, _scene in world.held_out(ROWS, 1)]
    statuses = ["ok"] * (ROWS - 1) + ["error"]
    best = _loop(models, max_attempts=3, keep="best")(_batch(prompts, statuses))
    # Every healthy row drew 3 images with seeds row seed, then salted; the row keeps the best (earliest of ties).
    for i in range(ROWS - 1):
        seed = derive_seed(5, f"r{i}")
        assert best[schema.ATTEMPTS][i] == 3 and best[schema.SEED][i] == seed
        assert best[schema.ATTEMPT_SEEDS][i] == [attempt_seed(seed, a) for a in range(3)]
        scores = best[schema.ATTEMPT_SCORES][i]
        assert best[schema.CHOSEN_ATTEMPT][i] == int(np.argmax(scores))
        assert best[schema.CLIP_SCORE][i] == max(scores) and best[schema.STATUS][i] == "ok"
    assert best[schema.ATTEMPTS][-1] == 0 and best[schema.CHOSEN_ATTEMPT][-1] == -1
    assert best[schema.ATTEMPT_SEEDS][-1] == [] and best[schema.STATUS][-1] == "error"
    assert (best["generate_s"][:-1] > 0).all()
    all_scores = np.array([best[schema.ATTEMPT_SCORES][i] for i in range(ROWS - 1)])
    assert len({int(np.argmax(s)) for s in all_scores}) > 1, "every row's best was the same attempt: a weak test"

    # first_passing with the median first score as the bar: some rows pass at once, others draw again.
    bar = float(np.median(all_scores[:, 0]))
    first = _loop(models, max_attempts=3, keep="first_passing", min_score=bar)(_batch(prompts, statuses))
    for i in range(ROWS - 1):
        scores = list(all_scores[i])
        passing = [a for a, s in enumerate(scores) if s >= bar]
        chosen = passing[0] if passing else int(np.argmax(scores))
        assert first[schema.CHOSEN_ATTEMPT][i] == chosen
        assert first[schema.ATTEMPT_SCORES][i] == scores[: passing[0] + 1 if passing else 3]
        assert first[schema.STATUS][i] == ("ok" if passing else "filtered")
        assert first[schema.CLIP_SCORE][i] == scores[chosen]
        if chosen == best[schema.CHOSEN_ATTEMPT][i]:  # the same attempt: the same image, whichever loop drew it
            assert _digest(first[schema.IMAGE_COLUMN][i]) == _digest(best[schema.IMAGE_COLUMN][i])
    assert any(first[schema.ATTEMPTS][i] == 1 for i in range(ROWS - 1))
    assert any(first[schema.ATTEMPTS][i] > 1 for i in range(ROWS - 1))


def test_a_rows_result_does_not_depend_on_its_batch(models: dict[str, Any]) -> None:
    prompts = [text for text, _image, _scene in world.held_out(ROWS, 1)]
    loop = _loop(models, max_attempts=3, keep="best")
    whole = loop(_batch(prompts, ["ok"] * ROWS))
    # The same rows in two other batches (the loop reruns attempts on different sub-batches then).
    halves = [loop({k: v[part] for k, v in _batch(prompts, ["ok"] * ROWS).items()})
              for part in (slice(0, 3), slice(3, ROWS))]
    joined = {k: np.concatenate([h[k] for h in halves]) for k in (schema.CHOSEN_ATTEMPT, schema.IMAGE_COLUMN)}
    assert list(joined[schema.CHOSEN_ATTEMPT]) == list(whole[schema.CHOSEN_ATTEMPT])
    assert [_digest(x) for x in joined[schema.IMAGE_COLUMN]] == [_digest(x) for x in whole[schema.IMAGE_COLUMN]]
