"""Short user requests about scenes of the procedural world (``training.world``), and their constraints.

A request names a subset of a scene's attributes, in the world's own words::

    request  := subject [" on a " background " background"]
    subject  := phrase [" and " phrase]  |  "something with one shape"  |  "something with two shapes"
    phrase   := "a" [size] [colour] (kind | "shape") [position phrase]   (at least one of size, colour,
                kind, position)
    background := colour | "dark" | "light"

e.g. "a red circle", "a large square at the top", "something with two shapes on a dark background",
"a blue triangle and a yellow cross", "a green shape on the left".  Words are exactly those of
:func:`world.caption` (sizes, colours, kinds, position phrases), plus two background groups:
``dark`` = :data:`DARK_BACKGROUNDS` (black, blue, purple) and ``light`` = :data:`LIGHT_BACKGROUNDS`
(white, yellow, pink).

Meaning (:func:`satisfies`): each named phrase matches a different shape of the scene (one phrase
may match either shape of a two-shape scene; two phrases need a two-shape scene); "one shape" /
"two shapes" fix the count; the background must be the named colour or in the named group.  So
"keeps every attribute the request named" is checked on an LM's caption with ``world.parse_caption``
and :func:`satisfies`.  Plain Python + numpy: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from training import world

__all__ = [
    "DARK_BACKGROUNDS",
    "LIGHT_BACKGROUNDS",
    "BACKGROUND_GROUPS",
    "REQUEST_WORDS",
    "ShapeWish",
    "Constraints",
    "make_request",
    "named_attributes",
    "satisfies",
]

DARK_BACKGROUNDS: tuple[str, ...] = ("black", "blue", "purple")
LIGHT_BACKGROUNDS: tuple[str, ...] = ("white", "yellow", "pink")
BACKGROUND_GROUPS: dict[str, tuple[str, ...]] = {"dark": DARK_BACKGROUNDS, "light": LIGHT_BACKGROUNDS}
_COUNT_WORDS = {1: "something with one shape", 2: "something with two shapes"}
# Every word a request may use (the LM's tokenizer covers them and the captions' words).
REQUEST_WORDS: tuple[str, ...] = tuple(sorted({
    *world.SHAPES, *world.COLOURS, *world.SIZES, *BACKGROUND_GROUPS,
    *" ".join(world.POSITION_PHRASES.values()).split(), *" ".join(_COUNT_WORDS.values()).split(),
    "a", "and", "on", "background", "shape",
}))


@dataclass(frozen=True)
class ShapeWish:
    """What a request says about one shape; None = not named."""

    kind: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None

    def matches(self, shape: world.Shape) -> bool:
        """Whether ``shape`` has every named attribute."""
        return all(
            wanted is None or wanted == value
            for wanted, value in (
                (self.kind, shape.kind), (self.colour, shape.colour),
                (self.size, shape.size), (self.position, shape.position),
            )
        )

    def text(self) -> str:
        """The phrase, e.g. ``"a large shape at the top"``."""
        words = ["a", *(w for w in (self.size, self.colour) if w), self.kind or "shape"]
        if self.position:
            words.append(world.POSITION_PHRASES[self.position])
        return " ".join(words)


@dataclass(frozen=True)
class Constraints:
    """Everything a request names.

    Attributes:
        shapes: one wish per named shape phrase (empty for a count request).
        count: 1 or 2 when the request fixes the number of shapes.
        background: a colour, or a group name of :data:`BACKGROUND_GROUPS`.
    """

    shapes: tuple[ShapeWish, ...] = ()
    count: int | None = None
    background: str | None = None

    def text(self) -> str:
        """The request these constraints read as (the inverse of :func:`named_attributes`)."""
        subject = _COUNT_WORDS[self.count] if self.count else " and ".join(w.text() for w in self.shapes)
        return f"{subject} on a {self.background} background" if self.background else subject


def _group(names: Iterable[str]) -> str:
    return "(?:" + "|".join(re.escape(name) for name in names) + ")"


_PHRASE_TO_POSITION = {phrase: name for name, phrase in world.POSITION_PHRASES.items()}
_PHRASE = re.compile(
    rf"a(?: (?P<size>{_group(world.SIZES)}))?(?: (?P<colour>{_group(world.COLOURS)}))?"
    rf" (?P<kind>{_group([*world.SHAPES, 'shape'])})(?: (?P<position>{_group(_PHRASE_TO_POSITION)}))?"
)
_REQUEST = re.compile(
    rf"(?P<subject>.+?)(?: on a (?P<background>{_group([*world.COLOURS, *BACKGROUND_GROUPS])}) background)?"
)


def named_attributes(request: str) -> Constraints | None:
    """The constraints ``request`` names, or None when it is not in the request grammar (module doc).

    Case, repeated whitespace and a final full stop are ignored.
    """
    text = " ".join(request.lower().split()).rstrip(".").strip()
    match = _REQUEST.fullmatch(text)
    if match is None:
        return None
    subject, background = match["subject"], match["background"]
    counts = {words: n for n, words in _COUNT_WORDS.items()}
    if subject in counts:
        return Constraints(count=counts[subject], background=background)
    wishes = []
    for phrase in subject.split(" and "):
        found = _PHRASE.fullmatch(phrase)
        if found is None:
            return None
        kind = None if found["kind"] == "shape" else found["kind"]
        position = _PHRASE_TO_POSITION[found["position"]] if found["position"] else None
        wish = ShapeWish(kind=kind, colour=found["colour"], size=found["size"], position=position)
        if wish == ShapeWish():
            return None  # "a shape" names nothing
        wishes.append(wish)
    if len(wishes) > world.MAX_SHAPES:
        return None
    return Constraints(shapes=tuple(wishes), background=background)


def satisfies(scene: world.Scene, constraints: Constraints) -> bool:
    """Whether ``scene`` has every attribute ``constraints`` name (see the module doc for the meaning)."""
    if constraints.count is not None and len(scene.shapes) != constraints.count:
        return False
    if constraints.background is not None:
        allowed = BACKGROUND_GROUPS.get(constraints.background, (constraints.background,))
        if scene.background not in allowed:
            return False
    if len(constraints.shapes) > len(scene.shapes):
        return False
    return any(
        all(wish.matches(shape) for wish, shape in zip(constraints.shapes, order))
        for order in permutations(scene.shapes, len(constraints.shapes))
    )


def _wish(shape: world.Shape, rng: np.random.Generator) -> ShapeWish:
    """Name a random non-empty subset of ``shape``'s attributes (kind and colour most often)."""
    while True:
        keep = rng.random(4) < (0.35, 0.6, 0.65, 0.45)  # size, colour, kind, position
        if keep.any():
            break
    return ShapeWish(
        size=shape.size if keep[0] else None, colour=shape.colour if keep[1] else None,
        kind=shape.kind if keep[2] else None, position=shape.position if keep[3] else None,
    )


def make_request(scene: world.Scene, rng: np.random.Generator) -> Constraints:
    """A random request that ``scene`` satisfies, drawn from ``rng`` (deterministic for its state).

    One time in eight it names the count ("something with two shapes"); otherwise one phrase per
    shape for a two-shape scene half the time, else one phrase about one of its shapes.  About one
    request in three adds the background, as its colour or, when it belongs to one, its group.
    """
    background = None
    if rng.random() < 0.35:
        groups = [name for name, members in BACKGROUND_GROUPS.items() if scene.background in members]
        background = groups[0] if groups and rng.random() < 0.5 else scene.background
    if rng.random() < 0.125:
        return Constraints(count=len(scene.shapes), background=background)
    shapes: tuple[world.Shape, ...]
    if len(scene.shapes) == 2 and rng.random() < 0.5:
        shapes = scene.shapes
    else:
        shapes = (scene.shapes[int(rng.integers(len(scene.shapes)))],)
    return Constraints(shapes=tuple(_wish(shape, rng) for shape in shapes), background=background)
