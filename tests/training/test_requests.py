"""The request grammar of ``training.requests``: requests read back as what they name, and scenes satisfy them."""

from __future__ import annotations

import numpy as np
import pytest

from training import requests, world
from training.requests import Constraints, ShapeWish, named_attributes, satisfies
from training.world import Scene, Shape

RED_CIRCLE_LEFT = Shape(kind="circle", colour="red", size="small", position="left")
BLUE_SQUARE_RIGHT = Shape(kind="square", colour="blue", size="large", position="right")
TWO = Scene(background="black", shapes=(RED_CIRCLE_LEFT, BLUE_SQUARE_RIGHT))
ONE = Scene(background="white", shapes=(RED_CIRCLE_LEFT,))


def test_a_request_reads_back_as_its_constraints_and_its_scene_satisfies_it() -> None:
    rng = np.random.default_rng(3)
    kinds = set()
    for scene in world.scenes(3000, seed=5):
        wanted = requests.make_request(scene, rng)
        text = wanted.text()
        assert named_attributes(text) == wanted, text
        assert satisfies(scene, wanted), text
        # the world's parser on the scene's own caption agrees
        parsed = world.parse_caption(world.caption(scene))
        assert parsed is not None and satisfies(parsed, named_attributes(text)), text
        kinds.add((wanted.count is not None, len(wanted.shapes), wanted.background in requests.BACKGROUND_GROUPS))
    # every form of request occurs: count, one phrase, two phrases, with and without a background group
    assert {(True, 0, False), (False, 1, False), (False, 2, False), (False, 1, True), (True, 0, True)} <= kinds


def test_make_request_is_deterministic_for_its_generator() -> None:
    scenes = list(world.scenes(50, seed=1))
    first = [requests.make_request(s, np.random.default_rng(9)).text() for s in scenes]
    second = [requests.make_request(s, np.random.default_rng(9)).text() for s in scenes]
    assert first == second


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red circle", Constraints(shapes=(ShapeWish(kind="circle", colour="red"),))),
        ("A large square at the top.", Constraints(shapes=(ShapeWish(kind="square", size="large", position="top"),))),
        ("a green shape on the left", Constraints(shapes=(ShapeWish(colour="green", position="left"),))),
        ("something with two shapes on a dark background", Constraints(count=2, background="dark")),
        (
            "a blue triangle and a yellow cross",
            Constraints(shapes=(ShapeWish(kind="triangle", colour="blue"), ShapeWish(kind="cross", colour="yellow"))),
        ),
        ("a circle on the right on a pink background", Constraints(
            shapes=(ShapeWish(kind="circle", position="right"),), background="pink")),
    ],
)
def test_named_attributes_of_examples(text: str, expected: Constraints) -> None:
    assert named_attributes(text) == expected


@pytest.mark.parametrize(
    "text",
    ["a shape", "a purple cow", "a red circle and a blue square and a green cross", "red circle",
     "a red circle on a grey background", "something with three shapes", ""],
)
def test_text_outside_the_grammar_is_none(text: str) -> None:
    assert named_attributes(text) is None


@pytest.mark.parametrize(
    ("text", "scene", "expected"),
    [
        ("a red circle", TWO, True),
        ("a red circle on the right", TWO, False),
        ("a blue square and a red circle", TWO, True),  # phrase order is free
        ("a red shape and a red circle", TWO, False),  # two phrases need two different shapes
        ("a circle and a square", ONE, False),
        ("something with two shapes", TWO, True),
        ("something with two shapes", ONE, False),
        ("something with one shape on a dark background", ONE, False),  # white is light, not dark
        ("something with one shape on a light background", ONE, True),
        ("a small shape on a black background", TWO, True),
        ("a large circle", TWO, False),
    ],
)
def test_satisfies(text: str, scene: Scene, expected: bool) -> None:
    constraints = named_attributes(text)
    assert constraints is not None
    assert satisfies(scene, constraints) is expected


def test_background_groups_are_disjoint_world_colours() -> None:
    dark, light = set(requests.DARK_BACKGROUNDS), set(requests.LIGHT_BACKGROUNDS)
    assert dark.isdisjoint(light) and dark | light <= set(world.COLOURS)
