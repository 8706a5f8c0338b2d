"""``training.distil`` caches the teacher's images, seeds and hidden states for training-split captions."""

from __future__ import annotations

import numpy as np
import pytest

from training import world
from training.adherence import rate
from training.distil import SEED_STRIDE, load_cache, main


def test_teacher_cache_round_trip_is_faithful(tmp_path, model_cache_dir: str) -> None:
    out = tmp_path / "teacher.npz"
    made = main(["data", "--out", str(out), "--n", "16", "--seed", "3", "--steps", "1", "--micro-batch", "8"])
    data = load_cache(str(out))
    assert made["bytes"] == out.stat().st_size
    assert data["images"].shape == (16, 64, 64, 3) and data["images"].dtype == np.uint8
    assert data["prompt_embeds"].shape == (16, 77, 64) and data["prompt_embeds"].dtype == np.float16
    assert list(data["seeds"]) == [3 * SEED_STRIDE + i for i in range(16)]
    captions = [str(text) for text in data["captions"]]
    assert all(world.split(world.parse_caption(text)) == "train" for text in captions)  # type: ignore[arg-type]
    # The teacher at 1 step draws training captions well (64 captions of seed 0: colour+position 1.0)
    colour_position = rate(captions, list(data["images"]), judge_shape=False)["colour_position"]
    assert colour_position is not None and colour_position >= 0.8


def test_a_file_without_images_is_refused(tmp_path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, captions=np.asarray(["a"]), seeds=np.asarray([0]))
    with pytest.raises(KeyError, match="images"):
        load_cache(str(path))
