"""A procedural caption/image world: one or two flat shapes on a plain background.

Every image is drawn from a :class:`Scene`, and its caption is written from the same
scene, so a caption is exactly true of its image and :func:`parse_caption` turns a
caption back into the scene (a benchmark can score a generated image from its prompt
alone, see ``training.adherence``).  Plain numpy + Pillow: no torch, no Ray.

Captions look like ``"a small red circle on the left, blue background"`` or
``"a large green square at the top and a small yellow triangle at the bottom, black
background"``.

Geometry (fractions of the canvas side, so any image size means the same scene):

- a shape's *extent* (bounding-box side) is set by its size (:data:`SIZES`);
- its bounding box is centred on the anchor of its position (:data:`POSITIONS`);
  anchors are 0.25 apart, so even two large shapes (left + right, or top + bottom,
  the only pairs allowed, :data:`POSITION_PAIRS`) keep a gap of 0.1 between them and
  a margin of 0.05 to the image border, and no shape reaches another position's anchor.

Held-out rule (:func:`split`): a (colour, shape, position) triple is held out when
the first 4 bytes of ``sha256("colour shape position")``, read big-endian, are
divisible by :data:`HELD_OUT_MODULUS` (8): about one triple in eight.  A scene is
``"test"`` when any of its shapes is a held-out triple, else ``"train"``.  Training
scenes therefore never show e.g. a red cross on the left (a held-out triple), while
red things, crosses and left-hand shapes all appear in training: test prompts measure
composition.  Size and background play no part in the rule.  Draw training data with
``pairs(..., split_name="train")`` and test prompts with :func:`held_out`.
"""

# One module past ~400 lines on purpose: the caption grammar, the renderer and the parser
# must agree word for word, so they live together.
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "COLOURS",
    "SHAPES",
    "SIZES",
    "POSITIONS",
    "POSITION_PHRASES",
    "POSITION_PAIRS",
    "HELD_OUT_MODULUS",
    "Shape",
    "Scene",
    "caption",
    "parse_caption",
    "render",
    "draw_kind",
    "kind_coverage",
    "kind_mask",
    "shape_mask",
    "sample_scene",
    "scenes",
    "pairs",
    "held_out",
    "is_held_out",
    "split",
]

# Named colours, RGB: every two are at least ~100 apart in RGB and ~40 apart in CIELAB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 130, 10),
    "yellow": (245, 225, 40),
    "green": (40, 170, 50),
    "cyan": (40, 210, 230),
    "blue": (30, 60, 225),
    "purple": (140, 40, 150),
    "pink": (250, 150, 210),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
# Size name -> extent (bounding-box side) as a fraction of the canvas side.
SIZES: dict[str, float] = {"small": 0.24, "large": 0.4}
# Position name -> anchor (x, y) as fractions of the canvas (x right, y down).
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Positions two shapes may take together (they never overlap, whatever their sizes).
POSITION_PAIRS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))
HELD_OUT_MODULUS = 8
MAX_SHAPES = 2
_SUPERSAMPLE = 4  # shapes are drawn 4x larger and box-filtered down (anti-aliasing)


@dataclass(frozen=True)
class Shape:
    """One shape of a scene; all fields are vocabulary names.

    Attributes:
        kind: one of :data:`SHAPES`.
        colour: one of :data:`COLOURS`.
        size: one of :data:`SIZES`.
        position: one of :data:`POSITIONS`.
    """

    kind: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for field, value, vocabulary in (
            ("kind", self.kind, SHAPES),
            ("colour", self.colour, COLOURS),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
        ):
            if value not in vocabulary:
                raise ValueError(f"unknown {field} {value!r}; expected one of {sorted(vocabulary)}")


@dataclass(frozen=True)
class Scene:
    """A background colour and one or two shapes.

    Two shapes must sit at one of :data:`POSITION_PAIRS` (in either order) and have
    different colours; no shape has the background's colour.

    Attributes:
        background: one of :data:`COLOURS`.
        shapes: the shapes, in caption order.
    """

    background: str
    shapes: tuple[Shape, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", tuple(self.shapes))  # a list is accepted, stored as a tuple
        if self.background not in COLOURS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {sorted(COLOURS)}")
        if not 1 <= len(self.shapes) <= MAX_SHAPES:
            raise ValueError(f"a scene has 1 to {MAX_SHAPES} shapes, got {len(self.shapes)}")
        if any(not isinstance(shape, Shape) for shape in self.shapes):
            raise TypeError("shapes must be Shape objects")
        if any(shape.colour == self.background for shape in self.shapes):
            raise ValueError("a shape cannot have the background colour")
        if len(self.shapes) == 2:
            first, second = self.shapes
            pair = {first.position, second.position}
            if not any(pair == set(allowed) for allowed in POSITION_PAIRS):
                raise ValueError(f"two shapes must be at one of {POSITION_PAIRS}, got {sorted(pair)}")
            if first.colour == second.colour:
                raise ValueError("two shapes must have different colours")


def caption(scene: Scene) -> str:
    """Describe ``scene`` in one line, e.g. ``"a small red circle on the left, blue background"``."""
    parts = [
        f"a {shape.size} {shape.colour} {shape.kind} {POSITION_PHRASES[shape.position]}"
        for shape in scene.shapes
    ]
    return f"{' and '.join(parts)}, {scene.background} background"


def _word(vocabulary: Iterable[str]) -> str:
    """A regex group matching exactly one of ``vocabulary``."""
    return "(" + "|".join(re.escape(name) for name in vocabulary) + ")"


_PHRASE_TO_POSITION = {phrase: name for name, phrase in POSITION_PHRASES.items()}
_SHAPE_PATTERN = re.compile(
    rf"a {_word(SIZES)} {_word(COLOURS)} {_word(SHAPES)} {_word(_PHRASE_TO_POSITION)}"
)
_CAPTION_PATTERN = re.compile(
    r"(?P<first>.+?)(?: and (?P<second>.+?))?, (?P<background>[a-z]+) background"
)


def parse_caption(text: str) -> Scene | None:
    """Invert :func:`caption`: the scene a caption describes, or None if it is not one.

    Case, surrounding/repeated whitespace and a final full stop are ignored; anything
    else must be exactly the caption grammar and describe a valid :class:`Scene`.
    """
    normalised = " ".join(text.lower().split()).rstrip(".").strip()
    match = _CAPTION_PATTERN.fullmatch(normalised)
    if match is None:
        return None
    shapes = []
    for phrase in (match["first"], match["second"]):
        if phrase is None:
            continue
        shape_match = _SHAPE_PATTERN.fullmatch(phrase)
        if shape_match is None:
            return None
        size, colour, kind, where = shape_match.groups()
        shapes.append(Shape(kind=kind, colour=colour, size=size, position=_PHRASE_TO_POSITION[where]))
    try:
        return Scene(background=match["background"], shapes=tuple(shapes))
    except ValueError:
        return None


def draw_kind(
    draw: ImageDraw.ImageDraw,
    kind: str,
    centre: tuple[float, float],
    extent: float,
    fill: int | tuple[int, int, int],
) -> None:
    """Draw a filled shape of ``kind`` whose bounding box (side ``extent``) is centred on ``centre``.

    Coordinates are pixels of the image ``draw`` draws on.
    """
    cx, cy = centre
    half = extent / 2
    if kind == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif kind == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif kind == "triangle":  # apex up, base at the bottom
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
    elif kind == "cross":  # an upright plus sign, arms a third of the extent wide
        arm = extent / 6
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPES}")


def _box_centre_px(position: str, size: int) -> tuple[float, float]:
    ax, ay = POSITIONS[position]
    return ax * size, ay * size


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image.

    Shapes are drawn at 4x resolution and box-filtered down, so edges are
    anti-aliased; the result depends only on ``scene`` and ``size``.

    Returns:
        uint8 array ``[size, size, 3]``.
    """
    if size < 8:
        raise ValueError(f"image size must be at least 8, got {size}")
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        cx, cy = _box_centre_px(shape.position, big)
        draw_kind(draw, shape.kind, (cx, cy), SIZES[shape.size] * big, COLOURS[shape.colour])
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def kind_coverage(
    kind: str,
    centre: tuple[float, float],
    extent: float,
    size: int,
    *,
    blur: float = 0.0,
    supersample: int = _SUPERSAMPLE,
) -> np.ndarray:
    """Share of each pixel of a ``size`` x ``size`` image that a shape of ``kind`` covers.

    Args:
        kind: one of :data:`SHAPES`.
        centre: bounding-box centre in pixels of the ``size`` image (x, y).
        extent: bounding-box side in pixels.
        size: image side in pixels.
        blur: Gaussian blur (standard deviation, pixels of the ``size`` image) applied
            to the coverage, as a blurred image of the shape would show it.
        supersample: drawing resolution factor (anti-aliasing).

    Returns:
        float32 array ``[size, size]`` in [0, 1].
    """
    big = size * supersample
    image = Image.new("L", (big, big), 0)
    draw_kind(
        ImageDraw.Draw(image), kind, (centre[0] * supersample, centre[1] * supersample),
        extent * supersample, 255,
    )
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur * supersample))
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255


def kind_mask(kind: str, centre: tuple[float, float], extent: float, size: int) -> np.ndarray:
    """Pixels at least half covered by a shape of ``kind`` (arguments as :func:`kind_coverage`); bool."""
    return kind_coverage(kind, centre, extent, size) >= 0.5


def shape_mask(shape: Shape, size: int = 64) -> np.ndarray:
    """Pixels that ``shape`` covers when its scene is rendered at ``size``; bool ``[size, size]``."""
    return kind_mask(shape.kind, _box_centre_px(shape.position, size), SIZES[shape.size] * size, size)


@cache
def is_held_out(colour: str, kind: str, position: str) -> bool:
    """Whether the (colour, shape, position) triple is reserved for test scenes (see module doc)."""
    digest = hashlib.sha256(f"{colour} {kind} {position}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % HELD_OUT_MODULUS == 0


def split(scene: Scene) -> Literal["train", "test"]:
    """``"test"`` when any shape of ``scene`` is a held-out triple (:func:`is_held_out`), else ``"train"``."""
    held = any(is_held_out(shape.colour, shape.kind, shape.position) for shape in scene.shapes)
    return "test" if held else "train"


def sample_scene(rng: np.random.Generator, *, max_shapes: int = MAX_SHAPES) -> Scene:
    """Draw a random scene: uniform background, 1..``max_shapes`` shapes, uniform attributes.

    Two shapes take one of :data:`POSITION_PAIRS` (in random order) and two different
    colours; no shape takes the background colour.
    """
    if not 1 <= max_shapes <= MAX_SHAPES:
        raise ValueError(f"max_shapes must be 1..{MAX_SHAPES}, got {max_shapes}")
    colour_names = list(COLOURS)
    background = colour_names[int(rng.integers(len(colour_names)))]
    count = int(rng.integers(1, max_shapes + 1))
    if count == 1:
        positions = [list(POSITIONS)[int(rng.integers(len(POSITIONS)))]]
    else:
        positions = list(POSITION_PAIRS[int(rng.integers(len(POSITION_PAIRS)))])
        if rng.integers(2):
            positions.reverse()
    others = [name for name in colour_names if name != background]
    colours = [others[int(i)] for i in rng.choice(len(others), size=count, replace=False)]
    size_names = list(SIZES)
    shapes = tuple(
        Shape(
            kind=SHAPES[int(rng.integers(len(SHAPES)))],
            colour=colour,
            size=size_names[int(rng.integers(len(size_names)))],
            position=position,
        )
        for colour, position in zip(colours, positions)
    )
    return Scene(background=background, shapes=shapes)


def scenes(
    n: int | None,
    seed: int,
    *,
    max_shapes: int = MAX_SHAPES,
    split_name: Literal["train", "test"] | None = None,
) -> Iterator[Scene]:
    """Scenes drawn one after another from ``np.random.default_rng(seed)``.

    Args:
        n: how many scenes (None: without end).
        seed: the generator seed; the same seed gives the same scenes.
        max_shapes: 1 or 2.
        split_name: keep only scenes of this split (others are drawn and skipped).
    """
    if split_name not in (None, "train", "test"):
        raise ValueError(f"split_name must be 'train', 'test' or None, got {split_name!r}")
    rng = np.random.default_rng(seed)
    made = 0
    while n is None or made < n:
        scene = sample_scene(rng, max_shapes=max_shapes)
        if split_name is not None and split(scene) != split_name:
            continue
        made += 1
        yield scene


def pairs(
    n: int | None,
    seed: int,
    *,
    size: int = 64,
    max_shapes: int = MAX_SHAPES,
    split_name: Literal["train", "test"] | None = None,
) -> Iterator[tuple[str, np.ndarray, Scene]]:
    """``(caption, image, scene)`` for the scenes of :func:`scenes` (same arguments), rendered at ``size``."""
    for scene in scenes(n, seed, max_shapes=max_shapes, split_name=split_name):
        yield caption(scene), render(scene, size), scene


def held_out(
    n: int | None, seed: int, *, size: int = 64, max_shapes: int = MAX_SHAPES
) -> Iterator[tuple[str, np.ndarray, Scene]]:
    """Test pairs: ``pairs(..., split_name="test")``; none of their scenes is ever a training scene.

    Train on ``pairs(..., split_name="train")`` to keep the held-out triples unseen.
    """
    return pairs(n, seed, size=size, max_shapes=max_shapes, split_name="test")
