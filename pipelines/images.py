"""Image encoding (uint8 arrays -> PNG/JPEG/WebP bytes) as a CPU ``map_batches`` task.

Encoding runs here, on CPU tasks, so the GPU actors only ever hand over raw
uint8 arrays and never wait on Pillow.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from actors.generate import IMAGE_COLUMN

__all__ = ["CODECS", "encode_image", "encode_images"]

# Format name -> function(PIL image, quality) -> bytes.
CODECS: dict[str, Callable[[Image.Image, int], bytes]] = {}


def _codec(name: str, pil_format: str, **fixed: object) -> None:
    def save(image: Image.Image, quality: int) -> bytes:
        buffer = io.BytesIO()
        options = dict(fixed)
        if pil_format != "PNG":
            options["quality"] = quality
        image.save(buffer, format=pil_format, **options)
        return buffer.getvalue()

    CODECS[name] = save


# PNG is lossless and deterministic; compress_level 6 is Pillow's speed/size default.
_codec("png", "PNG", compress_level=6)
_codec("jpg", "JPEG", subsampling=0)
_codec("webp", "WEBP", method=4)


def encode_image(pixels: np.ndarray, *, image_format: str, quality: int) -> bytes:
    """Encode one ``uint8 [H, W, 3]`` array in the given format."""
    return CODECS[image_format](Image.fromarray(np.ascontiguousarray(pixels)), quality)


def encode_images(batch: dict[str, np.ndarray], *, image_format: str, quality: int) -> dict[str, np.ndarray]:
    """Replace the image column by encoded bytes, their sha256 and the format."""
    start = time.perf_counter()
    size = len(batch["status"])
    encoded = np.empty(size, dtype=object)
    digests = np.empty(size, dtype=object)
    for i in range(size):
        if batch["status"][i] != "ok":
            encoded[i], digests[i] = b"", ""
            continue
        encoded[i] = encode_image(batch[IMAGE_COLUMN][i], image_format=image_format, quality=quality)
        digests[i] = hashlib.sha256(encoded[i]).hexdigest()
    del batch[IMAGE_COLUMN]
    batch["image"] = encoded
    batch["sha256"] = digests
    batch["image_format"] = np.full(size, image_format, dtype=object)
    batch["image_encode_s"] = np.full(size, (time.perf_counter() - start) / max(size, 1))
    return batch
