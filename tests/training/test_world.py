"""The procedural caption/image world: determinism, captions, pixels, held-out split."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from training import world
from training.world import COLOURS, POSITIONS, SHAPES, SIZES, Scene, Shape


def _random_scenes(count: int, seed: int, max_shapes: int = 2) -> list[Scene]:
    return list(world.scenes(count, seed, max_shapes=max_shapes))


def test_same_seed_gives_the_same_pairs() -> None:
    first = list(world.pairs(25, seed=11))
    second = list(world.pairs(25, seed=11))
    assert [c for c, _, _ in first] == [c for c, _, _ in second]
    assert [s for _, _, s in first] == [s for _, _, s in second]
    assert all(a.tobytes() == b.tobytes() for (_, a, _), (_, b, _) in zip(first, second))


def test_different_seeds_give_different_pairs() -> None:
    first = [c for c, _, _ in world.pairs(25, seed=1)]
    second = [c for c, _, _ in world.pairs(25, seed=2)]
    assert first != second


def test_pairs_have_any_length_and_the_requested_image_size() -> None:
    endless = list(itertools.islice(world.pairs(None, seed=0, size=32), 7))
    assert len(endless) == 7
    assert len(list(world.pairs(0, seed=0))) == 0
    for text, image, scene in endless:
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert text == world.caption(scene)


def test_caption_examples() -> None:
    one = Scene("blue", (Shape("circle", "red", "small", "left"),))
    assert world.caption(one) == "a small red circle on the left, blue background"
    two = Scene(
        "black", (Shape("square", "green", "large", "top"), Shape("triangle", "yellow", "small", "bottom"))
    )
    assert world.caption(two) == (
        "a large green square at the top and a small yellow triangle at the bottom, black background"
    )


def test_parse_caption_inverts_caption() -> None:
    for scene in _random_scenes(600, seed=3):
        assert world.parse_caption(world.caption(scene)) == scene


def test_parse_caption_forgives_case_spacing_and_full_stop() -> None:
    expected = Scene("blue", (Shape("circle", "red", "small", "left"),))
    assert world.parse_caption("  A small RED circle  on the left, blue background. ") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red cat",
        "a small red circle on the left",  # no background
        "a small mauve circle on the left, blue background",  # unknown colour
        "a medium red circle on the left, blue background",  # unknown size
        "a small red circle on the left, red background",  # shape colour = background
        "a small red circle on the left and a small blue square in the center, black background",  # overlap
        "a small red circle on the left and a large red square on the right, black background",  # same colour
        "a small red circle on the left and a small blue circle on the right and a small green "
        "circle at the top, black background",  # three shapes
    ],
)
def test_parse_caption_rejects_what_caption_never_writes(text: str) -> None:
    assert world.parse_caption(text) is None


def test_scene_rejects_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        Shape("hexagon", "red", "small", "left")
    with pytest.raises(ValueError):
        Scene("red", (Shape("circle", "red", "small", "left"),))
    with pytest.raises(ValueError):
        Scene("red", ())
    with pytest.raises(ValueError):
        Scene("red", (Shape("circle", "blue", "small", "left"), Shape("circle", "green", "small", "top")))
    with pytest.raises(ValueError):
        next(world.scenes(1, seed=0, split_name="validation"))  # type: ignore[arg-type]


def test_vocabularies_are_distinct_enough() -> None:
    assert len(COLOURS) >= 8 and len(SHAPES) >= 4 and 2 <= len(SIZES) <= 3 and len(POSITIONS) == 5
    for a, b in itertools.combinations(COLOURS.values(), 2):
        assert np.linalg.norm(np.subtract(a, b)) >= 90


def test_sampled_scenes_cover_the_vocabularies_and_keep_the_rules() -> None:
    scenes = _random_scenes(1500, seed=5)
    shapes = [shape for scene in scenes for shape in scene.shapes]
    assert {s.kind for s in shapes} == set(SHAPES)
    assert {s.colour for s in shapes} == set(COLOURS)
    assert {s.size for s in shapes} == set(SIZES)
    assert {s.position for s in shapes} == set(POSITIONS)
    assert {scene.background for scene in scenes} == set(COLOURS)
    assert {len(scene.shapes) for scene in scenes} == {1, 2}
    for scene in scenes:
        assert all(shape.colour != scene.background for shape in scene.shapes)
    assert {len(scene.shapes) for scene in _random_scenes(200, seed=5, max_shapes=1)} == {1}


@pytest.mark.parametrize("size", [32, 64, 128])
def test_rendered_pixels_show_the_named_colour_at_the_named_place(size: int) -> None:
    for scene in _random_scenes(150, seed=size):
        image = world.render(scene, size)
        background = COLOURS[scene.background]
        for corner in [(1, 1), (1, size - 2), (size - 2, 1), (size - 2, size - 2)]:
            assert tuple(image[corner]) == background
        used = {shape.position for shape in scene.shapes}
        for position, (ax, ay) in POSITIONS.items():
            pixel = tuple(image[int(ay * size), int(ax * size)])
            if position in used:
                shape = next(s for s in scene.shapes if s.position == position)
                assert pixel == COLOURS[shape.colour], (world.caption(scene), position)
            else:  # no shape ever reaches another position's anchor
                assert pixel == background, (world.caption(scene), position)


def test_render_is_deterministic_and_shape_mask_matches_it() -> None:
    for scene in _random_scenes(40, seed=8):
        image = world.render(scene)
        assert image.tobytes() == world.render(scene).tobytes()
        for shape in scene.shapes:
            pixels = image[world.shape_mask(shape)].astype(float)
            to_shape = np.linalg.norm(pixels - COLOURS[shape.colour], axis=-1)
            to_background = np.linalg.norm(pixels - COLOURS[scene.background], axis=-1)
            assert (to_shape <= to_background).mean() > 0.95, world.caption(scene)


def test_held_out_rule_is_pinned() -> None:
    triples = list(itertools.product(COLOURS, SHAPES, POSITIONS))
    held = [t for t in triples if world.is_held_out(*t)]
    # Changing the rule or a vocabulary changes which prompts are unseen in training.
    assert len(held) == 38
    scene = Scene("black", (Shape(held[0][1], held[0][0], "small", held[0][2]),))
    assert world.split(scene) == "test"


def test_held_out_split_is_disjoint_from_training_and_leaves_every_word_in_training() -> None:
    train = list(world.scenes(1500, seed=21, split_name="train"))
    test = [scene for _, _, scene in world.held_out(300, seed=21)]
    assert len(test) == 300 and all(world.split(s) == "test" for s in test)
    assert all(world.split(s) == "train" for s in train)
    assert not {world.caption(s) for s in train} & {world.caption(s) for s in test}
    train_triples = {(s.colour, s.kind, s.position) for scene in train for s in scene.shapes}
    assert not any(world.is_held_out(*t) for t in train_triples)
    # each held-out triple is a new combination of words all seen in training
    assert {c for c, _, _ in train_triples} == set(COLOURS)
    assert {k for _, k, _ in train_triples} == set(SHAPES)
    assert {p for _, _, p in train_triples} == set(POSITIONS)
    assert {(c, k) for c, k, _ in train_triples} == set(itertools.product(COLOURS, SHAPES))


@pytest.mark.slow
def test_world_imports_neither_torch_nor_ray() -> None:
    code = "import sys, training.world, training.adherence; assert not {'torch', 'ray'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
