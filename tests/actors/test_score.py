"""The score stage on a real (tiny, built-in) CLIP model, called the way Ray calls it."""

from __future__ import annotations

import numpy as np
import pytest

from actors.generate import IMAGE_COLUMN
from actors.score import ScoreStage
from pipelines.spec import ModelSpec, ScoreSpec, StageSpec
from training import world


def _batch(statuses: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = np.empty(len(statuses), dtype=object)
    for i, status in enumerate(statuses):
        ok = status == "ok"
        images[i] = rng.integers(0, 255, (64, 48, 3), dtype=np.uint8) if ok else np.zeros((0, 0, 3), np.uint8)
    return {
        "prompt": np.array([f"a red circle {i}" for i in range(len(statuses))], dtype=object),
        "status": np.array(statuses, dtype=object),
        "stage": np.array(["" if s == "ok" else "input" for s in statuses], dtype=object),
        "error": np.array(["" if s == "ok" else "prompt is empty" for s in statuses], dtype=object),
        "seed": np.arange(len(statuses), dtype=np.int64) + 100,
        IMAGE_COLUMN: images,
    }


@pytest.fixture(scope="module")
def spec_model(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return ModelSpec(uri="builtin:tiny-clip", cache_dir=str(tmp_path_factory.mktemp("clip-cache")))


def test_scores_every_image_and_only_images(spec_model: ModelSpec) -> None:
    stage = ScoreStage(score=ScoreSpec(model=spec_model), stage=StageSpec(micro_batch_size=2))
    out = stage(_batch(["ok", "error", "ok", "ok"]))
    scores = out["clip_score"]
    assert np.isnan(scores[1]) and np.isfinite(scores[[0, 2, 3]]).all()
    assert ((scores[[0, 2, 3]] >= 0) & (scores[[0, 2, 3]] <= 100)).all()
    assert list(out["status"]) == ["ok", "error", "ok", "ok"]
    # One attempt each (no regenerate loop): the row seed and its score; none for the row that failed before.
    assert list(out["attempts"]) == [1, 0, 1, 1] and list(out["chosen_attempt"]) == [0, -1, 0, 0]
    assert out["attempt_seeds"][0] == [100] and out["attempt_seeds"][1] == []
    assert out["attempt_scores"][2] == [scores[2]] and out["attempt_scores"][1] == []
    again = stage(_batch(["ok", "error", "ok", "ok"]))["clip_score"]
    np.testing.assert_allclose(again[[0, 2, 3]], scores[[0, 2, 3]], rtol=1e-5)


def test_min_score_marks_low_rows_filtered(spec_model: ModelSpec) -> None:
    probe = ScoreStage(score=ScoreSpec(model=spec_model), stage=StageSpec())(_batch(["ok"] * 4))["clip_score"]
    threshold = float(np.median(probe))
    out = ScoreStage(score=ScoreSpec(model=spec_model, min_score=threshold), stage=StageSpec())(_batch(["ok"] * 4))
    low = probe < threshold
    assert low.any() and not low.all()
    assert list(out["status"]) == ["filtered" if is_low else "ok" for is_low in low]
    for i in np.flatnonzero(low):
        assert out["stage"][i] == "score" and "below min_score" in out["error"][i]


def _world_batch(prompts: list[str], images: list[np.ndarray]) -> dict[str, np.ndarray]:
    batch = _batch(["ok"] * len(prompts))
    batch["prompt"] = np.array(prompts, dtype=object)
    batch[IMAGE_COLUMN] = np.empty(len(images), dtype=object)
    for i, image in enumerate(images):
        batch[IMAGE_COLUMN][i] = image
    return batch


def test_default_clip_scores_matched_pairs_above_shuffled(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The default score model (the shipped shapes-clip) through the stage, on held-out world pairs."""
    default_uri = ScoreSpec().model.uri
    score = ScoreSpec(model=ModelSpec(uri=default_uri, cache_dir=str(tmp_path_factory.mktemp("default-clip"))))
    stage = ScoreStage(score=score, stage=StageSpec(micro_batch_size=4))
    pairs = list(world.held_out(8, 3))
    prompts, images = [text for text, _, _ in pairs], [image for _, image, _ in pairs]
    matched = stage(_world_batch(prompts, images))["clip_score"]
    shuffled = stage(_world_batch(prompts[1:] + prompts[:1], images))["clip_score"]
    assert matched.mean() > shuffled.mean() + 20, (matched, shuffled)
    assert (matched > shuffled).sum() >= 7, (matched, shuffled)


def _pairs(n: int) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (40 + 8 * (i % 3), 48, 3), dtype=np.uint8) for i in range(n)]
    prompts = [("a big red circle on a blue square " * (i % 4)) + f"shape {i}" for i in range(n)]
    return images, prompts


def test_scores_are_batch_invariant(spec_model: ModelSpec) -> None:
    """A row's score is bit-identical whatever batch it comes in: size, position, neighbours, bisection."""
    stage = ScoreStage(score=ScoreSpec(model=spec_model), stage=StageSpec(micro_batch_size=3))
    images, prompts = _pairs(7)
    full = stage(_world_batch(prompts, images))["clip_score"]
    for order in ([6, 5, 4, 3, 2, 1, 0], [3], [0, 3], [5, 1, 3, 0], [2, 6, 4, 1, 0, 3, 5, 2, 2]):
        part = stage(_world_batch([prompts[i] for i in order], [images[i] for i in order]))["clip_score"]
        np.testing.assert_array_equal(part, full[order], err_msg=str(order))
    # A failed neighbour (status error) does not move the others' scores either.
    batch = _world_batch(prompts, images)
    batch["status"][2] = "error"
    mixed = stage(batch)["clip_score"]
    assert np.isnan(mixed[2])
    np.testing.assert_array_equal(np.delete(mixed, 2), np.delete(full, 2))


def test_scorer_micro_batch_fixes_the_shapes(spec_model: ModelSpec) -> None:
    from models.clip_score import ClipScorer
    from models.store import resolve_model_path

    scorer = ClipScorer(resolve_model_path(spec_model.uri, cache_dir=spec_model.local_cache_dir()))
    images, prompts = _pairs(5)
    together = scorer.score(images, prompts, micro_batch=2)
    alone = np.concatenate([scorer.score([image], [prompt], micro_batch=2) for image, prompt in zip(images, prompts)])
    np.testing.assert_array_equal(together, alone)
    assert together.dtype == np.float32 and together.shape == (5,)
    # Without a micro-batch: one pass over all pairs; the same scores up to rounding.
    np.testing.assert_allclose(scorer.score(images, prompts), together, rtol=1e-4, atol=1e-4)


def test_writes_the_image_embedding_the_score_used(spec_model: ModelSpec) -> None:
    """``image_embedding``: unit length, NaN rows where no image, batch-invariant, and the score's own embedding."""
    stage = ScoreStage(score=ScoreSpec(model=spec_model), stage=StageSpec(micro_batch_size=3))
    images, prompts = _pairs(5)
    batch = _world_batch(prompts, images)
    batch["status"][1] = "error"
    out = stage(batch)
    embeddings = out["image_embedding"]
    assert embeddings.dtype == np.float32 and embeddings.shape == (5, stage.scorer.embedding_dim)
    assert np.isnan(embeddings[1]).all()
    kept = np.delete(embeddings, 1, axis=0)
    np.testing.assert_allclose(np.linalg.norm(kept, axis=1), 1.0, atol=1e-5)
    alone = stage(_world_batch([prompts[3]], [images[3]]))["image_embedding"]
    np.testing.assert_array_equal(alone[0], embeddings[3])
    texts = stage.scorer.embed_texts([prompts[3]], fixed_length=True).numpy()[0]
    assert out["clip_score"][3] == pytest.approx(100 * max(float(embeddings[3] @ texts), 0), abs=1e-3)
