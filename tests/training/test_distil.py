"""``training.distil``: the teacher cache, the distillation run, and the shipped student's adherence.

The shipped ``builtin:shapes-turbo`` draws held-out captions well enough that the pixel rules of
``training.adherence`` pass at the floors below, where the same folder with a re-initialised
student fails them.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.backends import load_backend
from models.diffusion import PromptEncoder
from models.store import resolve_model_path
from training import world
from training.adherence import rate
from training.distil import SEED_STRIDE, load_cache, main
from training.train_gan import generate, random_weight_copy

HELD_OUT = [text for text, _image, _scene in world.held_out(100, 1)]
# Measured on these 100 captions (models/zoo/shapes-turbo/README.md has the 200-caption table):
# the shipped student passes background / colour + position / shape at 1.00 / 0.96 / 0.74, a
# re-initialised student at 0.08 / 0.00 / 0.00. The floors are issue 21's targets.
FLOORS = {"background": 0.98, "colour_position": 0.90, "shape": 0.6}


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


def test_distillation_run_writes_a_student_the_gan_backend_draws(tmp_path, model_cache_dir: str) -> None:
    cache = tmp_path / "teacher.npz"
    main(["data", "--out", str(cache), "--n", "16", "--steps", "1", "--micro-batch", "8"])
    out = tmp_path / "student"
    result = main([
        "train", "--data", str(cache), "--out", str(out), "--steps", "8", "--warmup", "4", "--batch", "8",
        "--g-channels", "32", "16", "8", "8", "8", "--attention-at", "4", "8", "--d-channels", "8", "8", "8", "8",
        "--eval-every", "0",
    ])
    assert result["steps"] == 8 and result["l1_last"] < result["l1_first"]
    prompts = ["a small red circle on the left, blue background"]
    embeds = PromptEncoder(str(out)).encode(prompts, None, guidance=[1.0], micro_batch=4)
    images = load_backend("gan", str(out)).generate(
        embeds, seeds=[0], width=64, height=64, steps=1, guidance=1.0, micro_batch=4
    )
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8


def test_shipped_student_adheres_where_a_reinitialised_one_does_not(tmp_path, model_cache_dir: str) -> None:
    path = resolve_model_path("builtin:shapes-turbo", cache_dir=model_cache_dir)
    trained = rate(HELD_OUT, generate(path, HELD_OUT))
    fresh = rate(HELD_OUT, generate(random_weight_copy(path, str(tmp_path / "fresh")), HELD_OUT))
    for key, floor in FLOORS.items():
        assert trained[key] is not None and fresh[key] is not None
        assert trained[key] >= floor > fresh[key], (key, trained, fresh)
