"""The one decoder of the images pixelmill reads from the user (style images).

:func:`decode_image` turns the bytes of any image Pillow can open into uint8 RGB
``[H, W, 3]``, by these rules (in this order):

1. **Pixel limit.**  An image with more than ``max_pixels`` pixels (width x height,
   read from the header before any pixel is decoded) is refused; the default is
   :data:`MAX_PIXELS`, Pillow's own ``MAX_IMAGE_PIXELS`` (89,478,485, about
   9459 x 9459).  Pillow's ``DecompressionBombError`` is refused the same way.
2. **First frame.**  An animation (GIF, APNG, WebP, multi-page TIFF) gives its first frame.
3. **EXIF orientation.**  The EXIF ``Orientation`` tag is applied
   (``ImageOps.exif_transpose``), so a rotated JPEG decodes upright.
4. **High bit depths.**  16-bit integer images (modes ``I;16``, ``I;16B``, ``I;16L``,
   ``I;16N``) are scaled by ``value / 257`` (65535 -> 255), rounded.  32-bit integer
   images (mode ``I``, which Pillow uses for some 16-bit files) must hold values in
   ``0..65535`` and are scaled the same way; other values are refused (the range is
   unknown).  Float images (mode ``F``, e.g. a float TIFF) must hold finite values in
   ``[0, 1]`` and are scaled by ``value * 255``, rounded; any other float range is
   refused (the range is unknown).  Grey results are repeated into R, G and B.
5. **Transparency.**  An image with alpha (``RGBA``, ``LA``, ``PA``, or a palette/
   grey/RGB image with a transparent colour) is composited on a **white** background
   (:data:`BACKGROUND`); the alpha channel is then dropped.
6. Every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...) is converted to RGB
   by Pillow.

Every refusal and every decode failure is a ``ValueError`` whose message names the
image (``source``) and the reason; a stage turns it into that row's error.
Plain Pillow and numpy: no torch, no Ray.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = ["BACKGROUND", "MAX_PIXELS", "decode_image"]

MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
"""Default pixel limit of :func:`decode_image`: Pillow's ``MAX_IMAGE_PIXELS``."""

BACKGROUND = (255, 255, 255)
"""The colour transparent pixels are composited on: white."""

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def decode_image(data: bytes, *, source: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes into uint8 RGB ``[H, W, 3]`` by the module's rules.

    Args:
        data: the file's bytes.
        source: where they came from (a URI), for messages.
        max_pixels: the most pixels (width x height) accepted.

    Raises:
        ValueError: the image is too large, has a value range that cannot be mapped to
            8 bits, or is not an image Pillow can decode; the message says which.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below decides
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise _Refused(
                        f"{source} has {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
                    )
                if getattr(image, "n_frames", 1) > 1:
                    image.seek(0)
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image), source)
    except _Refused as refused:
        raise ValueError(str(refused)) from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{source} is too large: {error}") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is this image's error
        raise ValueError(f"{source} is not a readable image: {type(error).__name__}: {error}") from None


class _Refused(Exception):
    """A rule of the decoder refused the image (carried out of the ``with`` unchanged)."""


def _to_rgb(image: Image.Image, source: str) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise _Refused(
                f"{source} is 32-bit integer with values {values.min()}..{values.max()}, "
                "outside 0..65535: its range is unknown"
            )
        return _grey_to_rgb(np.round(values / 257.0))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            finite = values[np.isfinite(values)]
            span = f"{finite.min():g}..{finite.max():g}" if finite.size else "none finite"
            raise _Refused(
                f"{source} is floating point with values {span} (or not finite), outside [0, 1]: its range is unknown"
            )
        return _grey_to_rgb(np.round(values * 255.0))
    if mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def _grey_to_rgb(values: np.ndarray) -> np.ndarray:
    grey = np.clip(values, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
