"""The pixel-rule adherence measure: right images score high, each kind of wrong image low."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from training import adherence, world
from training.world import COLOURS, SHAPES, Scene, Shape

MIRROR = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def degrade(image: np.ndarray, rng: np.random.Generator, *, radius: float = 1.5) -> np.ndarray:
    """Blur (PIL Gaussian), shift each channel by up to +-20 and add pixel noise (sigma 6)."""
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius))
    pixels = np.asarray(blurred, dtype=np.float64) + rng.uniform(-20, 20, 3)
    pixels += rng.normal(0, 6, pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def unused_colour(scene: Scene, rng: np.random.Generator) -> str:
    used = {scene.background, *(shape.colour for shape in scene.shapes)}
    free = [name for name in COLOURS if name not in used]
    return free[int(rng.integers(len(free)))]


def with_shape(scene: Scene, index: int, **changes: str) -> Scene:
    shapes = list(scene.shapes)
    shapes[index] = dataclasses.replace(shapes[index], **changes)
    return dataclasses.replace(scene, shapes=tuple(shapes))


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return list(world.scenes(200, seed=1234))


def test_correct_images_score_high(scenes: list[Scene]) -> None:
    rates = adherence.rate([world.caption(s) for s in scenes], [world.render(s) for s in scenes])
    assert all(value >= 0.95 for value in rates.values()), rates


def test_blurred_off_colour_noisy_images_score_high(scenes: list[Scene]) -> None:
    rng = np.random.default_rng(0)
    images = [degrade(world.render(s), rng) for s in scenes]
    rates = adherence.rate([world.caption(s) for s in scenes], images)
    assert all(value >= 0.95 for value in rates.values()), rates


def test_muted_colours_score_high(scenes: list[Scene]) -> None:
    rng = np.random.default_rng(8)
    images = []
    for scene in scenes[:100]:
        pixels = degrade(world.render(scene), rng).astype(np.float64)
        grey = pixels.mean(axis=-1, keepdims=True)
        images.append(np.round(0.7 * pixels + 0.3 * grey).astype(np.uint8))  # 30% desaturated
    rates = adherence.rate(scenes[:100], images)
    assert rates["background"] >= 0.95 and rates["colour_position"] >= 0.95, rates
    assert rates["shape"] >= 0.9, rates


def test_any_image_size_is_judged(scenes: list[Scene]) -> None:
    rng = np.random.default_rng(1)
    subset = scenes[:30]
    big = [degrade(world.render(s, 256), rng, radius=5) for s in subset]
    small = [world.render(s, 40) for s in subset]
    for images in (big, small):
        rates = adherence.rate(subset, images, judge_shape=False)
        assert rates["background"] >= 0.95 and rates["colour_position"] >= 0.95, rates


def _wrong_rates(pairs: list[tuple[Scene, np.ndarray]], *, judge_shape: bool = False) -> dict:
    captions = [world.caption(scene) for scene, _ in pairs]
    return adherence.rate(captions, [image for _, image in pairs], judge_shape=judge_shape)


def test_wrong_colour_scores_low(scenes: list[Scene]) -> None:
    rng = np.random.default_rng(2)
    pairs = []
    for scene in scenes[:100]:
        named = with_shape(scene, int(rng.integers(len(scene.shapes))), colour=unused_colour(scene, rng))
        pairs.append((named, degrade(world.render(scene), rng)))
    rates = _wrong_rates(pairs)
    assert rates["colour_position"] <= 0.1 and rates["all"] <= 0.1, rates
    assert rates["background"] >= 0.95, rates


def test_wrong_position_scores_low(scenes: list[Scene]) -> None:
    rng = np.random.default_rng(3)
    pairs = []
    for scene in scenes[:100]:
        moved = tuple(  # mirrored; a centred shape moves to a random side
            dataclasses.replace(s, position=MIRROR.get(s.position) or list(MIRROR)[int(rng.integers(4))])
            for s in scene.shapes
        )
        pairs.append((scene, degrade(world.render(dataclasses.replace(scene, shapes=moved)), rng)))
    rates = _wrong_rates(pairs)
    assert rates["colour_position"] <= 0.1 and rates["all"] <= 0.1, rates


def test_wrong_size_scores_low(scenes: list[Scene]) -> None:
    rng = np.random.default_rng(4)
    swap = {"small": "large", "large": "small"}
    pairs = [
        (scene, degrade(world.render(with_shape(scene, 0, size=swap[scene.shapes[0].size])), rng))
        for scene in scenes[:100]
    ]
    rates = _wrong_rates(pairs)
    assert rates["colour_position"] <= 0.1 and rates["all"] <= 0.1, rates


def test_wrong_background_scores_low(scenes: list[Scene]) -> None:
    rng = np.random.default_rng(5)
    pairs = [
        (dataclasses.replace(scene, background=unused_colour(scene, rng)), degrade(world.render(scene), rng))
        for scene in scenes[:100]
    ]
    rates = _wrong_rates(pairs)
    assert rates["background"] <= 0.1 and rates["all"] <= 0.1, rates
    assert rates["colour_position"] >= 0.95, rates  # the shapes are still right


def test_wrong_shape_fails_only_the_shape_check(scenes: list[Scene]) -> None:
    rng = np.random.default_rng(6)
    pairs = []
    for scene in scenes[:100]:
        others = [kind for kind in SHAPES if kind != scene.shapes[0].kind]
        drawn = with_shape(scene, 0, kind=others[int(rng.integers(len(others)))])
        pairs.append((scene, degrade(world.render(drawn), rng)))
    rates = _wrong_rates(pairs, judge_shape=True)
    assert rates["shape"] <= 0.1 and rates["all"] <= 0.1, rates
    assert rates["colour_position"] >= 0.95 and rates["background"] >= 0.95, rates


@pytest.mark.parametrize("kind", ["noise", "black", "grey", "background"])
def test_noise_and_blank_images_score_low(scenes: list[Scene], kind: str) -> None:
    rng = np.random.default_rng(7)
    pairs = []
    for scene in scenes[:100]:
        if kind == "noise":
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        else:
            colour = {"black": (0, 0, 0), "grey": (128, 128, 128)}.get(kind, COLOURS[scene.background])
            image = np.full((64, 64, 3), colour, dtype=np.uint8)
        pairs.append((scene, image))
    rates = _wrong_rates(pairs, judge_shape=True)
    assert rates["colour_position"] <= 0.1 and rates["shape"] <= 0.1 and rates["all"] <= 0.1, rates
    if kind == "noise":
        assert rates["background"] <= 0.1, rates


def test_score_reports_what_it_found() -> None:
    scene = Scene(
        "blue", (Shape("circle", "red", "small", "left"), Shape("square", "yellow", "large", "right"))
    )
    result = adherence.score(world.caption(scene), world.render(scene, 96))
    assert result.scene == scene and result.all_ok
    assert result.detected_background == "blue" and result.background_share > 0.99
    left, right = result.shapes
    assert left.centroid == pytest.approx((0.25, 0.5), abs=0.02)
    assert right.centroid == pytest.approx((0.75, 0.5), abs=0.02)
    assert left.extent == pytest.approx(0.24, abs=0.03) and right.extent == pytest.approx(0.4, abs=0.03)
    assert (left.predicted_kind, right.predicted_kind) == ("circle", "square")
    unjudged = adherence.score(scene, world.render(scene), judge_shape=False)
    assert unjudged.shape_ok is None and unjudged.shapes[0].kind_ok is None and unjudged.all_ok


def test_rate_and_score_reject_bad_input() -> None:
    image = world.render(Scene("blue", (Shape("circle", "red", "small", "left"),)))
    with pytest.raises(ValueError):
        adherence.score("a red cat", image)
    with pytest.raises(ValueError):
        adherence.score("a small red circle on the left, blue background", image[..., 0])
    with pytest.raises(ValueError):
        adherence.rate(["a small red circle on the left, blue background"], [])
    assert adherence.rate(["a small red circle on the left, blue background"], [image], judge_shape=False)[
        "shape"
    ] is None


def test_size_ranges_separate_the_sizes() -> None:
    ranges = adherence.size_ranges()
    (small_low, small_high), (large_low, large_high) = ranges["small"], ranges["large"]
    assert small_low < world.SIZES["small"] < small_high == large_low < world.SIZES["large"] < large_high
