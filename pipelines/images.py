"""Image encoding (uint8 arrays -> PNG/JPEG/WebP bytes) as a CPU ``map_batches`` task.

Encoding runs here, on CPU tasks, so the GPU actors only ever hand over raw
uint8 arrays and never wait on Pillow.  :class:`ImageEncodeStage` is the stage
(``actors.base.Stage``: timing column ``image_encode_s``, fault point
``stage:image_encode``, a row that fails to encode becomes an error row);
:func:`encode_images` is its function form, which Ray runs as tasks.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from actors.base import Batch, Stage
from pipelines import schema
from pipelines.schema import IMAGE_COLUMN, Status

__all__ = ["CODECS", "ImageEncodeStage", "encode_image", "encode_images"]

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


class ImageEncodeStage(Stage):
    """Replace the image column by encoded bytes (``image``), their ``sha256`` and the ``image_format``.

    Rows that are not ``ok`` get empty bytes and an empty digest.

    Args:
        image_format: a key of :data:`CODECS`.
        quality: JPEG/WebP quality (PNG ignores it).
    """

    contract = schema.IMAGE_ENCODE

    def __init__(self, *, image_format: str, quality: int) -> None:
        self.image_format = image_format
        self.quality = quality

    def compute(self, batch: Batch, rows: list[int]) -> list[bytes]:
        images = batch[IMAGE_COLUMN]
        return [encode_image(images[i], image_format=self.image_format, quality=self.quality) for i in rows]

    def finish(self, batch: Batch, results: dict[int, bytes]) -> None:
        size = len(batch[schema.STATUS])
        encoded = np.empty(size, dtype=object)
        digests = np.empty(size, dtype=object)
        for i in range(size):
            if i in results and batch[schema.STATUS][i] == Status.OK:
                encoded[i], digests[i] = results[i], hashlib.sha256(results[i]).hexdigest()
            else:
                encoded[i], digests[i] = b"", ""
        del batch[IMAGE_COLUMN]
        batch[schema.IMAGE] = encoded
        batch[schema.SHA256] = digests
        batch[schema.IMAGE_FORMAT] = np.full(size, self.image_format, dtype=object)


def encode_images(batch: Batch, *, image_format: str, quality: int) -> Batch:
    """:class:`ImageEncodeStage` as a function, for ``map_batches`` CPU tasks (a class would need an actor pool).

    Returns the batch with its images encoded, and the stages' list columns (``schema.LIST_ITEM_TYPES``)
    as Python lists again: Ray hands them to this task as numpy arrays, which it would store back
    as its tensor type (and then fail to concatenate with a block of empty lists).
    """
    for name in schema.LIST_ITEM_TYPES:
        if name in batch:
            cells = np.empty(len(batch[name]), dtype=object)
            for i, value in enumerate(batch[name]):  # one by one: a slice assignment would broadcast
                cells[i] = np.asarray(value).tolist()
            batch[name] = cells
    return ImageEncodeStage(image_format=image_format, quality=quality)(batch)


# ``FusedStage`` builds the stage itself when this function is one of its steps.
encode_images.stage_class = ImageEncodeStage  # type: ignore[attr-defined]
