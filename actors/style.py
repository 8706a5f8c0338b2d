"""The style stage: uint8 images -> stylized uint8 images, per-row styles, on its own actor pool."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.base import Batch, Stage, healthy_rows
from actors.loading import local_file, stage_device
from actors.rowerrors import run_isolating
from pipelines import schema
from pipelines.schema import IMAGE_COLUMN
from pipelines.spec import StageSpec, StyleSpec

__all__ = ["StyleStage"]

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off", ""}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_bool(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"style_preserve_color must be true or false, got {value!r}")


def _as_strength(value: Any) -> float:
    try:
        strength = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"style_strength must be a number, got {value!r}") from None
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"style_strength must be between 0 and 1, got {value!r}")
    return strength


@dataclass
class _BatchStyles:
    """Each row's resolved style settings for the batch being processed."""

    names: np.ndarray
    hashes: np.ndarray
    strengths: np.ndarray
    keep: np.ndarray
    refs: dict[int, Any] = field(default_factory=dict)


class StyleStage(Stage):
    """Callable class for ``map_batches``: applies each row's style to its image.

    A row's style is its style-column value, else ``style.default``: a built-in
    style (``style-07`` or ``7``), a style-image URI (any fsspec path), or empty
    for no styling.  Style images are fetched and their vectors predicted once
    per actor (an LRU cache keyed by URI, and by content hash so identical files
    share a vector).  Bad references become error rows with stage ``style``.

    Args:
        style: the job's style settings.
        stage: device and batch settings of this stage.
        storage_options: fsspec options for style images in object storage.

    ``stage.micro_batch_size`` is the rows per forward pass of a backend that batches
    (``adain``: fixed padded chunks, as in the other model stages); the ``onnx``
    networks take one image per run, so every pass there is already one row.
    """

    contract = schema.STYLE_STAGE

    def __init__(self, *, style: StyleSpec, stage: StageSpec, storage_options: dict[str, Any] | None = None) -> None:
        from models.style import STYLE_BACKENDS

        self.style = style
        self.storage_options = storage_options or {}
        device = stage_device(stage)
        options: dict[str, Any] = {"device": device}
        if style.backend == "adain":
            assert style.adain is not None  # StyleSpec's validator requires the weights for this backend
            vgg, decoder = (local_file(uri, self.storage_options) for uri in (style.adain.vgg, style.adain.decoder))
            options.update(vgg_path=vgg, decoder_path=decoder)
            options["dtype"] = stage.dtype
        self.backend = STYLE_BACKENDS[style.backend](**options)
        self.micro_batch = stage.micro_batch_size
        self._styles: _BatchStyles | None = None  # the batch being processed (an actor runs one at a time)
        self._by_uri: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()
        self._by_hash: OrderedDict[str, np.ndarray] = OrderedDict()
        self.fetches = 0
        self.predictions = 0

    def _remember(self, cache: OrderedDict, key: str, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.style.cache_size:
            cache.popitem(last=False)

    def _image_vector(self, uri: str) -> tuple[str, np.ndarray]:
        """Return ``(content hash, style vector)`` for a style-image URI, from the cache when possible."""
        from models.style import decode_style_image
        from pipelines.storage import read_bytes

        if uri in self._by_uri:
            self._by_uri.move_to_end(uri)
            return self._by_uri[uri]
        try:
            data = read_bytes(uri, self.storage_options)
        except IsADirectoryError:
            raise ValueError(f"style reference {uri} is a directory/prefix, not an image") from None
        except FileNotFoundError:
            raise ValueError(f"style image not found: {uri}") from None
        self.fetches += 1
        digest = hashlib.sha256(data).hexdigest()[:16]
        vector = self._by_hash.get(digest)
        if vector is None:
            vector = self.backend.style_vector(decode_style_image(data, uri))
            self.predictions += 1
        self._remember(self._by_hash, digest, vector)
        self._remember(self._by_uri, uri, (digest, vector))
        return digest, vector

    def _resolve(self, value: str) -> tuple[Any, str]:
        """Return ``(StyleRef, content hash or "")`` for a style value; raise ``ValueError`` if bad."""
        from models.style import StyleRef, builtin_style_index

        if "://" not in value and "/" not in value and "." not in value:
            index = builtin_style_index(value)
            if index is None:
                raise ValueError(f"unknown style {value!r}: use style-00 .. style-25, 0 .. 25, or a style-image URI")
            if self.style.backend != "onnx":
                raise ValueError(f"backend {self.style.backend} has no built-in styles; give a style image URI")
            return StyleRef(builtin=index), ""
        digest, vector = self._image_vector(value)
        return StyleRef(vector=vector), digest

    def _row_value(self, batch: dict[str, np.ndarray], column: str | None, i: int) -> Any:
        if column is None or column not in batch:
            return None
        value = batch[column][i]
        if isinstance(value, (float, np.floating)) and not math.isnan(value) and float(value).is_integer():
            return int(value)  # a numeric column read with nulls becomes float: 7.0 -> 7
        return None if _missing(value) else value

    def select(self, batch: Batch) -> list[list[int]]:
        """Resolve every row's style settings; rows with bad ones become errors, rows without a style pass."""
        size = len(batch[schema.STATUS])
        styles = self._styles = _BatchStyles(
            names=np.full(size, "", dtype=object),
            hashes=np.full(size, "", dtype=object),
            strengths=np.full(size, self.style.strength, dtype=np.float64),
            keep=np.full(size, self.style.preserve_color, dtype=bool),
        )
        healthy = set(healthy_rows(batch))
        errors: dict[int, str] = {}
        for i in range(size):
            value = self._row_value(batch, self.style.column, i)
            value = str(value).strip() if value is not None else (self.style.default or "")
            styles.names[i] = value
            if i not in healthy or not value:
                continue
            message = self._resolve_row(batch, styles, i, value)
            if message:
                errors[i] = message
        self.mark(batch, errors)
        return [sorted(styles.refs)]

    def _resolve_row(self, batch: Batch, styles: _BatchStyles, i: int, value: str) -> str:
        """Resolve row ``i``'s settings into ``styles``; return its error message ("" when fine).

        Runs through ``run_isolating`` like :meth:`compute`, so nothing the resolution raises
        (a read error, a decoder refusal, a model error predicting the style vector) leaves
        ``__call__``: it is this row's error, and a sticky device error still restarts the actor.
        A ``ValueError`` (a bad setting or reference) gives its message alone.
        """

        def resolve(rows: Sequence[int]) -> list[str]:
            try:
                strength = self._row_value(batch, self.style.strength_column, i)
                styles.strengths[i] = self.style.strength if strength is None else _as_strength(strength)
                preserve = self._row_value(batch, self.style.preserve_color_column, i)
                styles.keep[i] = self.style.preserve_color if preserve is None else _as_bool(preserve)
                styles.refs[i], styles.hashes[i] = self._resolve(value)
            except ValueError as error:
                return [str(error)]
            return [""]

        found, failed = run_isolating(resolve, [i])
        message = failed.get(i) or found.get(i, "")
        if message:
            styles.refs.pop(i, None)
        return message

    def compute(self, batch: Batch, rows: list[int]) -> list[np.ndarray]:
        from models.style import blend, keep_colors

        styles, images = self._styles, batch[IMAGE_COLUMN]
        assert styles is not None  # set by select, which runs first
        styled = self.backend.stylize_batch(
            [images[i] for i in rows], [styles.refs[i] for i in rows], micro_batch=self.micro_batch
        )
        out = []
        for i, image in zip(rows, styled):
            image = keep_colors(image, images[i]) if styles.keep[i] else image
            out.append(blend(image, images[i], float(styles.strengths[i])))
        return out

    def finish(self, batch: Batch, results: dict[int, np.ndarray]) -> None:
        styles, images = self._styles, batch[IMAGE_COLUMN]
        assert styles is not None  # set by select, which runs first
        self._styles = None
        size = len(batch[schema.STATUS])
        column = np.empty(size, dtype=object)
        for i in range(size):
            column[i] = results.get(i, images[i])
        batch[IMAGE_COLUMN] = column
        batch[schema.STYLE] = styles.names
        batch[schema.STYLE_HASH] = styles.hashes
        batch[schema.STYLE_BACKEND] = np.full(size, self.backend.name, dtype=object)
        batch[schema.STYLE_STRENGTH] = styles.strengths
        batch[schema.STYLE_PRESERVE_COLOR] = styles.keep
