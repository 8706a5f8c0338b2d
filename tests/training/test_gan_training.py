"""The shipped ``shapes-gan`` draws held-out captions well enough that the pixel rules of
``training.adherence`` pass where the same architecture with random weights fails."""

from __future__ import annotations

import pytest

from models.store import resolve_model_path
from training import world
from training.adherence import rate
from training.train_gan import generate, random_weight_copy

CAPTIONS = [text for text, _image, _scene in world.held_out(100, 1)]
# Measured on these 100 captions: the shipped GAN passes background / colour_position at 1.00 /
# 0.13, the random-weight generator at 0.08 / 0.00 (on 200 held-out captions: 1.00 / 0.17 against
# 0.10 / 0.00, models/zoo/shapes-gan/README.md).  Shape kinds are judged too unreliably at this
# training level (0.07) to gate on.  The floors sit well under the shipped model, above the random one.
BACKGROUND_FLOOR = 0.8
COLOUR_POSITION_FLOOR = 0.05


@pytest.fixture(scope="module")
def gan_path(model_cache_dir: str) -> str:
    return resolve_model_path("builtin:shapes-gan", cache_dir=model_cache_dir)


def test_held_out_adherence_beats_random_weights(gan_path: str, tmp_path) -> None:
    trained = rate(CAPTIONS, generate(gan_path, CAPTIONS), judge_shape=False)
    random_path = random_weight_copy(gan_path, str(tmp_path / "random"))
    random = rate(CAPTIONS, generate(random_path, CAPTIONS), judge_shape=False)
    assert trained["background"] >= BACKGROUND_FLOOR > random["background"], (trained, random)
    assert trained["colour_position"] >= COLOUR_POSITION_FLOOR > random["colour_position"], (trained, random)
