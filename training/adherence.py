"""Prompt adherence of an image to a ``training.world`` caption, judged from its pixels alone.

No model is involved: the caption is parsed back into a scene
(:func:`training.world.parse_caption`) and the image is checked against it with fixed
pixel rules, so the measure cannot share the blind spots of the model being judged.

The image is resized to 64 x 64 and every pixel is given the nearest named colour
(:data:`training.world.COLOURS`, RGB distance; see :func:`classify_colours`).  Then:

- **background**: the most common colour of the 2-pixel border must be the named
  background and cover at least :data:`MIN_BACKGROUND_SHARE` of the border.
- **colour + position** (per shape; all shapes must pass): of the pixels of the
  named colour, the 4-connected blob with the most *solid* pixels (those that survive
  a 3 x 3 opening) is the shape.  It is *found* when at least :data:`MIN_SOLIDITY` of
  it is solid (blur fringes, where two colours mix into a third, and noise specks are
  not), it holds at least :data:`MIN_CONCENTRATION` of all the solid pixels of that
  colour, and it covers at most :data:`MAX_BLOB_AREA` of the image.  A found blob
  passes when its centroid is within :data:`POSITION_TOLERANCE` (in x and in y) of
  the named position's anchor and its bounding-box side is in the named size's range
  (:func:`size_ranges`).  Nothing here depends on the shape's kind, so a wrong shape
  does not fail colour + position.
- **shape** (reported apart, optional): a found blob's coverage map (how much of
  each pixel is shape colour rather than surroundings) is compared with every kind
  drawn at the map's centroid, at a few sizes and blur levels
  (:data:`TEMPLATE_SCALES`, :data:`TEMPLATE_BLURS`); the kind of least squared
  difference must be the named one.
"""

# One module past ~400 lines on purpose: every rule reads the same parsed scene and the same
# segmentation, and the judge is read (and trusted) as one piece.
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.world import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    Shape,
    draw_kind,
    kind_coverage,
    parse_caption,
)

__all__ = [
    "ANALYSIS_SIZE",
    "MAX_BLOB_AREA",
    "MIN_BACKGROUND_SHARE",
    "MIN_CONCENTRATION",
    "MIN_SOLIDITY",
    "POSITION_TOLERANCE",
    "AdherenceResult",
    "ShapeFinding",
    "classify_colours",
    "rate",
    "score",
    "size_ranges",
]

ANALYSIS_SIZE = 64  # every image is judged at this resolution
BORDER_PIXELS = 2  # width of the border ring that defines the background
MIN_BACKGROUND_SHARE = 0.5  # the background colour must cover this share of the border
POSITION_TOLERANCE = 0.12  # max |centroid - anchor| per axis, fraction of the side (anchors: 0.25 apart)
MIN_SOLIDITY = 0.3  # share of the blob that survives a 3x3 opening
MIN_CONCENTRATION = 0.6  # share of the colour's solid pixels that lie in the blob
_MIN_BLOB_PIXELS = 6  # a blob needs this many pixels to count as found
MAX_BLOB_AREA = 0.5  # a blob over this share of the image is a background, not a shape
# Blur levels (pixels at 64 x 64) of the shape templates.  Stronger or more levels let a
# wrong kind, blurred, fit as well as the right one (on sigma-2 images: 0.80 right with
# (0, 0.75, 1.5, 2.25), 0.88 with these two).
TEMPLATE_BLURS = (0.0, 1.5)
# Template extents relative to the one that matches the coverage map's area; the spread
# and a free contrast factor keep a muted image (30% desaturated: 0.86 -> 0.995 right).
TEMPLATE_SCALES = (0.9, 1.0, 1.1)
_TEMPLATE_SUPERSAMPLE = 2

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE_RGB = np.array([COLOURS[name] for name in _PALETTE_NAMES], dtype=np.float32)


def classify_colours(image: np.ndarray) -> np.ndarray:
    """Index into ``tuple(COLOURS)`` of the nearest named colour (RGB distance) per pixel; ``[H, W]``.

    RGB rather than CIELAB: blur mixes colours linearly in RGB, so the nearest-colour
    edge of a blurred shape stays half-way across the blur and its size is kept.  In
    CIELAB, which stretches dark colours, shapes on a black background grew by a
    pixel or two a side and small ones were measured as large.
    """
    pixels = np.asarray(image, dtype=np.float32)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2, and |p|^2 is the same for every c
    distances = (_PALETTE_RGB**2).sum(axis=-1) - 2 * pixels @ _PALETTE_RGB.T
    return distances.argmin(axis=-1)


def _to_analysis_size(image: np.ndarray) -> np.ndarray:
    """``image`` as uint8 ``[64, 64, 3]`` (box filter when shrinking, bilinear when growing)."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {array.dtype} {array.shape}")
    if array.shape[:2] == (ANALYSIS_SIZE, ANALYSIS_SIZE):
        return array
    shrinking = min(array.shape[:2]) > ANALYSIS_SIZE
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((ANALYSIS_SIZE, ANALYSIS_SIZE), method))


def _erode(mask: np.ndarray) -> np.ndarray:
    """3 x 3 erosion; the image edge does not erode."""
    padded = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3 x 3 dilation."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _opening(mask: np.ndarray) -> np.ndarray:
    """3 x 3 morphological opening: keeps the parts where a 3 x 3 square fits."""
    return _dilate(_erode(mask)) & mask


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of ``mask``: one int per component, ``-1`` outside ``mask``."""
    h, w = mask.shape
    none = h * w
    labels = np.where(mask, np.arange(h * w).reshape(h, w), none)
    while True:
        padded = np.pad(labels, 1, constant_values=none)
        neighbours = np.minimum.reduce(
            [labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        )
        merged = np.where(mask, neighbours, none)
        flat = np.append(merged.ravel(), none)
        merged = np.where(mask, flat[merged], none)  # jump to the label's own label
        if np.array_equal(merged, labels):
            break
        labels = merged
    return np.where(mask, labels, -1)


def _main_blob(mask: np.ndarray, solid: np.ndarray) -> np.ndarray:
    """The component of ``mask`` with the most ``solid`` pixels (ties: the largest); all False if empty."""
    if not mask.any():
        return np.zeros_like(mask)
    labels = _components(mask)
    inside = labels[mask]
    area = np.bincount(inside)
    solid_area = np.bincount(labels[solid & mask], minlength=area.size)
    best = np.lexsort((area, solid_area))[-1]
    return labels == best


def size_ranges() -> dict[str, tuple[float, float]]:
    """Accepted bounding-box side (fraction of the image side) per size name.

    Neighbouring sizes meet at the geometric mean of their extents; the smallest
    size reaches down to 0.4 times its extent and the largest up to 1.5 times its own.
    """
    ordered = sorted(SIZES.items(), key=lambda item: item[1])
    ranges = {}
    for i, (name, extent) in enumerate(ordered):
        low = extent * 0.4 if i == 0 else float(np.sqrt(extent * ordered[i - 1][1]))
        high = extent * 1.5 if i == len(ordered) - 1 else float(np.sqrt(extent * ordered[i + 1][1]))
        ranges[name] = (low, high)
    return ranges


_SIZE_RANGES = size_ranges()


@cache
def _kind_geometry(kind: str) -> tuple[float, float, float]:
    """(area / extent**2, centroid x offset / extent, centroid y offset / extent) of a kind."""
    side, extent = 256, 200.0
    cover = kind_coverage(kind, (side / 2, side / 2), extent, side).astype(np.float64)
    total = cover.sum()
    centres = np.arange(side) + 0.5 - side / 2
    return (
        total / extent**2,
        (cover.sum(axis=0) @ centres) / total / extent,
        (cover.sum(axis=1) @ centres) / total / extent,
    )


def _coverage_map(image: np.ndarray, blob: np.ndarray, solid: np.ndarray, colour: str) -> np.ndarray:
    """How much of each pixel near ``blob`` is shape rather than its surroundings, in [0, 1].

    A pixel is modelled as a mix of the shape's colour and the surrounding colour (the
    median of a ring 5-6 pixels outside the blob), and its share of the shape colour
    is its projection on the line between the two.  The shape's colour is the farther
    (from the surroundings) of the blob's median solid colour and the named colour
    shifted by the surroundings' offset from their nearest named colour: a small
    blurred shape never reaches its pure colour, and a colour cast moves both.
    Pixels farther than 3 pixels from the blob are 0 (they belong to other things).
    """
    grown = [blob]  # grown[k]: pixels within k (chessboard distance) of the blob
    for _ in range(6):
        grown.append(_dilate(grown[-1]))
    near, ring = grown[3], grown[6] & ~grown[4]
    pixels = image.astype(np.float64)
    outside = np.median(pixels[ring], axis=0) if ring.any() else np.zeros(3)
    cast = outside - _PALETTE_RGB[int(classify_colours(outside[None, None])[0, 0])]
    core = solid & blob if (solid & blob).any() else blob
    candidates = (np.median(pixels[core], axis=0), _PALETTE_RGB[_PALETTE_NAMES.index(colour)] + cast)
    inside = max(candidates, key=lambda candidate: float(((candidate - outside) ** 2).sum()))
    direction = inside - outside
    if direction @ direction < 1.0:
        return blob.astype(np.float64)
    share = np.clip((pixels - outside) @ direction / (direction @ direction), 0.0, 1.0)
    return np.where(near, share, 0.0)


def _templates(kind: str, centre: tuple[float, float], extent: float, side: int) -> list[np.ndarray]:
    """Coverage of a ``side`` x ``side`` window by ``kind``, once per blur of :data:`TEMPLATE_BLURS`."""
    scale = _TEMPLATE_SUPERSAMPLE
    drawing = Image.new("L", (side * scale, side * scale), 0)
    draw_kind(ImageDraw.Draw(drawing), kind, (centre[0] * scale, centre[1] * scale), extent * scale, 255)
    templates = []
    for blur in TEMPLATE_BLURS:
        blurred = drawing.filter(ImageFilter.GaussianBlur(blur * scale)) if blur > 0 else drawing
        templates.append(np.asarray(blurred.resize((side, side), Image.Resampling.BOX), np.float64) / 255)
    return templates


def _best_kind(image: np.ndarray, blob: np.ndarray, solid: np.ndarray, colour: str) -> str | None:
    """The shape kind whose drawing best explains the blob's coverage map (least squares).

    Each kind is drawn centred on the map's centroid (which blur does not move), with
    the extent that gives the map's area times each of :data:`TEMPLATE_SCALES`, and
    blurred by each of :data:`TEMPLATE_BLURS`; each drawing is scaled by its best
    contrast factor (a muted image's map never reaches 1), and the kind of the
    closest drawing wins.  None when the map is empty.
    """
    cover = _coverage_map(image, blob, solid, colour)
    area = cover.sum()
    if area <= 0:
        return None
    ys, xs = np.nonzero(blob)
    margin = 5
    window = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 + 2 * margin
    x0 = (xs.min() + xs.max() + 1 - window) // 2
    y0 = (ys.min() + ys.max() + 1 - window) // 2
    crop = np.zeros((window, window))
    y_lo, x_lo = max(y0, 0), max(x0, 0)
    y_hi, x_hi = min(y0 + window, cover.shape[0]), min(x0 + window, cover.shape[1])
    crop[y_lo - y0 : y_hi - y0, x_lo - x0 : x_hi - x0] = cover[y_lo:y_hi, x_lo:x_hi]
    centres = np.arange(window) + 0.5
    cx = crop.sum(axis=0) @ centres / area
    cy = crop.sum(axis=1) @ centres / area
    best, best_error = None, np.inf
    for kind in SHAPES:
        fill, offset_x, offset_y = _kind_geometry(kind)
        for scale in TEMPLATE_SCALES:
            extent = np.sqrt(area / fill) * scale
            centre = (cx - offset_x * extent, cy - offset_y * extent)
            for template in _templates(kind, centre, extent, window):
                contrast = (crop * template).sum() / max((template * template).sum(), 1e-9)
                error = ((crop - contrast * template) ** 2).sum()
                if error < best_error:
                    best, best_error = kind, error
    return best


@dataclass(frozen=True)
class ShapeFinding:
    """What the pixels say about one named shape.

    Attributes:
        shape: the named shape.
        centroid: (x, y) of the blob as fractions of the image side; None when the
            named colour is nowhere in the image.
        extent: bounding-box side of the blob (larger of width and height), fraction.
        area: blob pixels as a fraction of the image.
        solidity: share of the blob surviving a 3 x 3 opening.
        concentration: share of the colour's solid pixels inside the blob.
        position_ok: centroid within :data:`POSITION_TOLERANCE` of the anchor.
        size_ok: extent within the named size's range.
        colour_position_ok: a solid, concentrated blob of the named colour, at the
            named place and of the named size.
        predicted_kind: best-matching shape kind; None when not judged or no blob
            was found.
        kind_ok: ``predicted_kind == shape.kind`` (False when no blob was found);
            None when shape is not judged.
    """

    shape: Shape
    centroid: tuple[float, float] | None
    extent: float
    area: float
    solidity: float
    concentration: float
    position_ok: bool
    size_ok: bool
    colour_position_ok: bool
    predicted_kind: str | None
    kind_ok: bool | None


@dataclass(frozen=True)
class AdherenceResult:
    """Adherence of one image to one scene.

    Attributes:
        scene: the scene the caption describes.
        background_ok: the border's dominant colour is the named background.
        colour_position_ok: every shape's colour is found at its place and size.
        shape_ok: every shape's kind is recognised; None when not judged.
        detected_background: the border's dominant named colour.
        background_share: its share of the border pixels.
        shapes: one finding per named shape, in caption order.
    """

    scene: Scene
    background_ok: bool
    colour_position_ok: bool
    shape_ok: bool | None
    detected_background: str
    background_share: float
    shapes: tuple[ShapeFinding, ...]

    @property
    def all_ok(self) -> bool:
        """Background and colour/position pass, and shape too when it was judged."""
        return self.background_ok and self.colour_position_ok and self.shape_ok is not False


def _find_shape(image: np.ndarray, labels: np.ndarray, shape: Shape, judge_shape: bool) -> ShapeFinding:
    """Look for ``shape`` in a 64 x 64 ``image`` whose pixels have the named-colour ``labels``."""
    side = labels.shape[0]
    colour_mask = labels == _PALETTE_NAMES.index(shape.colour)
    solid = _opening(colour_mask)
    blob = _main_blob(colour_mask, solid)
    blob_area = int(blob.sum())
    if blob_area == 0:
        return ShapeFinding(
            shape=shape, centroid=None, extent=0.0, area=0.0, solidity=0.0, concentration=0.0,
            position_ok=False, size_ok=False, colour_position_ok=False, predicted_kind=None,
            kind_ok=False if judge_shape else None,
        )
    solidity = (solid & blob).sum() / blob_area
    concentration = (solid & blob).sum() / max(int(solid.sum()), 1)
    ys, xs = np.nonzero(blob)
    centroid_px = (xs.mean() + 0.5, ys.mean() + 0.5)
    centroid = (centroid_px[0] / side, centroid_px[1] / side)
    extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / side
    anchor = POSITIONS[shape.position]
    position_ok = all(abs(c - a) <= POSITION_TOLERANCE for c, a in zip(centroid, anchor))
    low, high = _SIZE_RANGES[shape.size]
    size_ok = low <= extent <= high
    found = (
        solidity >= MIN_SOLIDITY
        and concentration >= MIN_CONCENTRATION
        and _MIN_BLOB_PIXELS <= blob_area <= MAX_BLOB_AREA * side**2
    )
    colour_position_ok = bool(found and position_ok and size_ok)
    predicted = kind_ok = None
    if judge_shape:
        predicted = _best_kind(image, blob, solid, shape.colour) if found else None
        kind_ok = predicted == shape.kind
    return ShapeFinding(
        shape=shape,
        centroid=centroid,
        extent=float(extent),
        area=blob_area / side**2,
        solidity=float(solidity),
        concentration=float(concentration),
        position_ok=bool(position_ok),
        size_ok=bool(size_ok),
        colour_position_ok=colour_position_ok,
        predicted_kind=predicted,
        kind_ok=kind_ok,
    )


def score(caption: str | Scene, image: np.ndarray, *, judge_shape: bool = True) -> AdherenceResult:
    """Judge how well ``image`` shows ``caption``.

    Args:
        caption: a ``training.world`` caption (or the scene itself).
        image: uint8 ``[H, W, 3]``, any size (resized to 64 x 64, so a non-square
            image is judged squashed into a square).
        judge_shape: also recognise each shape's kind (``shape_ok``); else it is None.

    Raises:
        ValueError: the caption is not a world caption, or the image is not uint8 RGB.
    """
    scene = caption if isinstance(caption, Scene) else parse_caption(caption)
    if scene is None:
        raise ValueError(f"not a world caption: {caption!r}")
    image = _to_analysis_size(image)
    labels = classify_colours(image)
    border = np.ones(labels.shape, dtype=bool)
    border[BORDER_PIXELS:-BORDER_PIXELS, BORDER_PIXELS:-BORDER_PIXELS] = False
    counts = np.bincount(labels[border], minlength=len(_PALETTE_NAMES))
    detected = _PALETTE_NAMES[int(counts.argmax())]
    share = counts.max() / counts.sum()
    findings = tuple(_find_shape(image, labels, shape, judge_shape) for shape in scene.shapes)
    return AdherenceResult(
        scene=scene,
        background_ok=bool(detected == scene.background and share >= MIN_BACKGROUND_SHARE),
        colour_position_ok=all(f.colour_position_ok for f in findings),
        shape_ok=all(f.kind_ok for f in findings) if judge_shape else None,
        detected_background=detected,
        background_share=float(share),
        shapes=findings,
    )


def rate(
    captions: Sequence[str | Scene], images: Sequence[np.ndarray] | np.ndarray, *, judge_shape: bool = True
) -> dict[str, float | None]:
    """Share of images passing each check.

    Returns:
        ``{"background", "colour_position", "shape", "all"}`` rates in [0, 1];
        ``"shape"`` is None when ``judge_shape`` is False.

    Raises:
        ValueError: different numbers of captions and images, or none.
    """
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions but {len(images)} images")
    if len(captions) == 0:
        raise ValueError("nothing to rate")
    results = [score(c, image, judge_shape=judge_shape) for c, image in zip(captions, images)]
    return {
        "background": float(np.mean([r.background_ok for r in results])),
        "colour_position": float(np.mean([r.colour_position_ok for r in results])),
        "shape": float(np.mean([bool(r.shape_ok) for r in results])) if judge_shape else None,
        "all": float(np.mean([r.all_ok for r in results])),
    }
