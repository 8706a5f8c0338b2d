"""Prompt adherence of an image to a ``models.world`` caption, judged from its pixels alone.

No model is involved: the caption is parsed back into a scene
(:func:`models.world.parse_caption`) and the image is checked against it with fixed
pixel rules, so the measure cannot share the blind spots of the model being judged.

The image is resized to 64 x 64 and every pixel is classified as the nearest named
colour (:data:`models.world.COLOURS`) in CIELAB.  Then:

- **background**: the most common colour of the 2-pixel border must be the named
  background and cover at least half of the border.
- **colour + position** (per shape, all must pass): among the pixels of the named
  colour, the largest 4-connected blob is the shape.  It must be *solid* (at least
  :data:`MIN_SOLIDITY` of it survives a 3 x 3 opening, so blur fringes and noise
  specks do not count), hold at least :data:`MIN_CONCENTRATION` of all the solid
  pixels of that colour, have its centroid within :data:`POSITION_TOLERANCE` (in x
  and y) of the named position's anchor, and a bounding-box side in the named size's
  range (:func:`size_ranges`; shape-independent, so a wrong shape does not fail it).
- **shape** (separate, optional): the blob is compared with each shape kind drawn
  with the blob's area and centroid; the kind of highest IoU must be the named one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from models.world import COLOURS, POSITIONS, SHAPES, SIZES, Scene, Shape, kind_mask, parse_caption

__all__ = [
    "ANALYSIS_SIZE",
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
POSITION_TOLERANCE = 0.12  # max |centroid - anchor| per axis, fraction of the side (anchors are 0.25 apart)
MIN_SOLIDITY = 0.3  # share of the blob that survives a 3x3 opening
MIN_CONCENTRATION = 0.6  # share of the colour's solid pixels that lie in the blob
_MIN_JUDGED_PIXELS = 6  # smaller blobs get no shape judgement
TEMPLATE_BLURS = (0.0, 1.0, 2.0)  # blur levels (pixels at 64 x 64) of the shape templates

_PALETTE_NAMES = tuple(COLOURS)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in 0..255, shape ``[..., 3]``."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1
    )


_PALETTE_LAB = _srgb_to_lab(np.array([COLOURS[name] for name in _PALETTE_NAMES]))


def classify_colours(image: np.ndarray) -> np.ndarray:
    """Index into ``tuple(COLOURS)`` of the nearest named colour (CIELAB) for each pixel; ``[H, W]``."""
    lab = _srgb_to_lab(image)
    distances = ((lab[..., None, :] - _PALETTE_LAB) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


def _to_analysis_size(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {array.dtype} {array.shape}")
    if array.shape[:2] == (ANALYSIS_SIZE, ANALYSIS_SIZE):
        return array
    shrinking = min(array.shape[:2]) > ANALYSIS_SIZE
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((ANALYSIS_SIZE, ANALYSIS_SIZE), method))


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
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


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of ``mask`` (all False when ``mask`` is empty)."""
    if not mask.any():
        return mask.copy()
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
    counts = np.bincount(labels[mask])
    return labels == counts.argmax()


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


@lru_cache(maxsize=None)
def _kind_geometry(kind: str) -> tuple[float, float, float]:
    """(area / extent**2, centroid x offset / extent, centroid y offset / extent) of a kind."""
    side, extent = 256, 200.0
    mask = kind_mask(kind, (side / 2, side / 2), extent, side)
    ys, xs = np.nonzero(mask)
    return mask.sum() / extent**2, (xs.mean() + 0.5 - side / 2) / extent, (ys.mean() + 0.5 - side / 2) / extent


def _best_kind(blob: np.ndarray, centroid_px: tuple[float, float]) -> str:
    """The shape kind that, drawn with the blob's area and centroid, overlaps it best (IoU).

    Each kind is also tried blurred (:data:`TEMPLATE_BLURS`), so a soft image's rounded
    corners match the kind they came from rather than a circle.
    """
    area = float(blob.sum())
    ys, xs = np.nonzero(blob)
    margin = 4
    window = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 + 2 * margin
    x0 = (xs.min() + xs.max() + 1 - window) // 2
    y0 = (ys.min() + ys.max() + 1 - window) // 2
    crop = np.zeros((window, window), dtype=bool)
    crop[ys - y0, xs - x0] = True
    best, best_iou = SHAPES[0], -1.0
    for kind in SHAPES:
        fill, offset_x, offset_y = _kind_geometry(kind)
        extent = np.sqrt(area / fill)
        centre = (centroid_px[0] - offset_x * extent - x0, centroid_px[1] - offset_y * extent - y0)
        for blur in TEMPLATE_BLURS:
            template = kind_mask(kind, centre, extent, window, blur=blur, supersample=2)
            iou = (crop & template).sum() / max((crop | template).sum(), 1)
            if iou > best_iou:
                best, best_iou = kind, iou
    return best


@dataclass(frozen=True)
class ShapeFinding:
    """What the pixels say about one named shape.

    Attributes:
        shape: the named shape.
        centroid: (x, y) of the blob as fractions of the image side; None when no blob.
        extent: bounding-box side of the blob (larger of width and height), fraction.
        area: blob pixels as a fraction of the image.
        solidity: share of the blob surviving a 3 x 3 opening.
        concentration: share of the colour's solid pixels inside the blob.
        position_ok: centroid within :data:`POSITION_TOLERANCE` of the anchor.
        size_ok: extent within the named size's range.
        colour_position_ok: a solid, concentrated blob of the named colour, at the
            named place and of the named size.
        predicted_kind: best-matching shape kind; None when not judged or no blob.
        kind_ok: ``predicted_kind == shape.kind``; None when shape is not judged.
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


def _find_shape(labels: np.ndarray, shape: Shape, judge_shape: bool) -> ShapeFinding:
    side = labels.shape[0]
    colour_mask = labels == _PALETTE_NAMES.index(shape.colour)
    blob = _largest_component(colour_mask)
    blob_area = int(blob.sum())
    if blob_area == 0:
        return ShapeFinding(shape, None, 0.0, 0.0, 0.0, 0.0, False, False, False, None,
                            False if judge_shape else None)
    solid = _opening(colour_mask)
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
    colour_position_ok = bool(
        position_ok and size_ok and solidity >= MIN_SOLIDITY and concentration >= MIN_CONCENTRATION
    )
    predicted = kind_ok = None
    if judge_shape:
        predicted = _best_kind(blob, centroid_px) if blob_area >= _MIN_JUDGED_PIXELS else None
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
        caption: a ``models.world`` caption (or the scene itself).
        image: uint8 ``[H, W, 3]``, any size (judged at 64 x 64).
        judge_shape: also recognise each shape's kind (``shape_ok``); else it is None.

    Raises:
        ValueError: the caption is not a world caption, or the image is not uint8 RGB.
    """
    scene = caption if isinstance(caption, Scene) else parse_caption(caption)
    if scene is None:
        raise ValueError(f"not a world caption: {caption!r}")
    labels = classify_colours(_to_analysis_size(image))
    border = np.ones(labels.shape, dtype=bool)
    border[BORDER_PIXELS:-BORDER_PIXELS, BORDER_PIXELS:-BORDER_PIXELS] = False
    counts = np.bincount(labels[border], minlength=len(_PALETTE_NAMES))
    detected = _PALETTE_NAMES[int(counts.argmax())]
    share = counts.max() / counts.sum()
    findings = tuple(_find_shape(labels, shape, judge_shape) for shape in scene.shapes)
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
