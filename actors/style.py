"""The style stage: uint8 images -> stylized uint8 images, per-row styles, on its own actor pool."""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from actors.generate import IMAGE_COLUMN
from actors.loading import local_file, stage_device
from actors.rowerrors import mark_errors, run_isolating
from pipelines.faults import inject
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


class StyleStage:
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
    """

    def __init__(self, *, style: StyleSpec, stage: StageSpec, storage_options: dict[str, Any] | None = None) -> None:
        from models.style import STYLE_BACKENDS

        self.style = style
        self.storage_options = storage_options or {}
        device = stage_device(stage)
        options: dict[str, Any] = {"device": device}
        if style.backend == "adain":
            vgg, decoder = (local_file(uri, self.storage_options) for uri in (style.adain.vgg, style.adain.decoder))
            options.update(vgg_path=vgg, decoder_path=decoder)
            options["dtype"] = stage.dtype
        self.backend = STYLE_BACKENDS[style.backend](**options)
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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from models.style import blend, keep_colors

        start = time.perf_counter()
        size = len(batch["status"])
        names = np.full(size, "", dtype=object)
        hashes = np.full(size, "", dtype=object)
        strengths = np.full(size, self.style.strength, dtype=np.float64)
        keep = np.full(size, self.style.preserve_color, dtype=bool)
        refs: dict[int, Any] = {}
        errors: dict[int, str] = {}
        for i in range(size):
            value = self._row_value(batch, self.style.column, i)
            value = str(value).strip() if value is not None else (self.style.default or "")
            names[i] = value
            if batch["status"][i] != "ok" or not value:
                continue
            try:
                strength = self._row_value(batch, self.style.strength_column, i)
                strengths[i] = self.style.strength if strength is None else _as_strength(strength)
                preserve = self._row_value(batch, self.style.preserve_color_column, i)
                keep[i] = self.style.preserve_color if preserve is None else _as_bool(preserve)
                refs[i], hashes[i] = self._resolve(value)
            except ValueError as error:
                errors[i] = str(error)
        mark_errors(batch, errors, stage="style")

        images = batch[IMAGE_COLUMN]

        def compute(rows: list[int]) -> list[np.ndarray]:
            inject("stage:style", prompts=[str(batch["prompt"][i]) for i in rows] if "prompt" in batch else [])
            styled = self.backend.stylize_batch([images[i] for i in rows], [refs[i] for i in rows])
            out = []
            for i, image in zip(rows, styled):
                image = keep_colors(image, images[i]) if keep[i] else image
                out.append(blend(image, images[i], float(strengths[i])))
            return out

        results, failures = run_isolating(compute, sorted(refs))
        mark_errors(batch, failures, stage="style")
        column = np.empty(size, dtype=object)
        for i in range(size):
            column[i] = results.get(i, images[i])
        batch[IMAGE_COLUMN] = column
        batch["style"] = names
        batch["style_hash"] = hashes
        batch["style_backend"] = np.full(size, self.backend.name, dtype=object)
        batch["style_strength"] = strengths
        batch["style_preserve_color"] = keep
        batch["style_s"] = np.full(size, (time.perf_counter() - start) / max(size, 1))
        return batch
