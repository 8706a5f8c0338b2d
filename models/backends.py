"""Generate backends: what turns the encode stage's embeddings into images, typed and registered here.

Every backend loads an image half that satisfies :class:`ImageBackend` and draws the model
folders whose ``model_index.json`` ``_class_name`` it lists; :data:`GENERATE_BACKENDS` is the
one registry (the spec's ``generate.backend`` names, the generate stage's loader, and which
backend a folder needs all come from it). The text half of every folder is loaded by
``models.encoder.PromptEncoder`` (``models.loading.load_text_half``: a diffusers pipeline, or a folder's
own text tower), so both halves consume and produce the same things whatever the backend.

Adding a backend: a module with its image half (a class satisfying ``ImageBackend``) and one
entry below; a folder written with a transformers ``tokenizer/`` + ``text_encoder/`` (see
``models.texttower``) needs no text code.

This module stays light (no torch: ``pipelines.spec`` lists the names at parse time); a
backend's model code is imported when it loads. It sits on top of ``models``: nothing in
``models`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from models.families import FAMILIES, read_model_index

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ImageBackend", "GenerateBackend", "GENERATE_BACKENDS", "backend_for", "load_backend"]


@runtime_checkable
class ImageBackend(Protocol):
    """The image half a generate backend loads: embeddings + seeds in, uint8 images out.

    Loaded as ``load(model_path, device=, dtype=, fast_paths=)`` (``dtype``: a name or None,
    ``fast_paths``: a ``models.fastpaths.FastPaths`` or None).

    Attributes:
        info: provenance: ``model_hash``, ``scheduler`` and ``pipeline``.
        fast_paths_applied: what the fast paths did (``models.fastpaths.apply_fast_paths``'s report).
    """

    info: dict[str, str]
    fast_paths_applied: dict[str, Any]

    def generate(
        self, embeds: dict[str, np.ndarray], *, seeds: list[int], width: int, height: int,
        steps: int, guidance: float, micro_batch: int = 1,
    ) -> np.ndarray:
        """One uint8 ``[B, height, width, 3]`` image per row, row ``i`` drawn from ``seeds[i]``."""
        ...

    def generate_checked(
        self, embeds: dict[str, np.ndarray], *, seeds: list[int], width: int, height: int,
        steps: int, guidance: float, micro_batch: int = 1,
    ) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
        """``generate`` plus ``{row: (status, reason)}`` for the rows that are not ok (``models.shared``)."""
        ...


@dataclass(frozen=True)
class GenerateBackend:
    """One way to draw images.

    Attributes:
        load: ``(model_path, device=, dtype=, fast_paths=) -> ImageBackend``.
        model_classes: the ``model_index.json`` ``_class_name`` values of the folders it draws.
        one_pass: draws in one forward pass without guidance: a row's ``steps`` and ``guidance``
            are ignored, and the output records ``steps=1``, ``guidance=1.0`` (no guidance).
    """

    load: Callable[..., ImageBackend]
    model_classes: tuple[str, ...]
    one_pass: bool = False


def _diffusers(model_path: str, **kwargs: Any) -> ImageBackend:
    from models.diffusion import ImageGenerator

    return ImageGenerator(model_path, **kwargs)


def _gan(model_path: str, **kwargs: Any) -> ImageBackend:
    from models.gan import GANImageGenerator

    return GANImageGenerator(model_path, **kwargs)


GENERATE_BACKENDS: dict[str, GenerateBackend] = {
    "diffusers": GenerateBackend(load=_diffusers, model_classes=tuple(FAMILIES)),
    # models.gan.GAN_CLASS_NAME (a test checks they agree; importing it here would import torch)
    "gan": GenerateBackend(load=_gan, model_classes=("TextConditionalGAN",), one_pass=True),
}


def backend_for(model_path: str) -> tuple[str, str]:
    """Return ``(model class name, name of the backend that draws it)`` for the folder at ``model_path``.

    Raises:
        ValueError: no backend draws this class (the message lists the supported ones).
    """
    class_name = read_model_index(model_path)["_class_name"]
    for name, backend in GENERATE_BACKENDS.items():
        if class_name in backend.model_classes:
            return class_name, name
    known = ", ".join(sorted(c for backend in GENERATE_BACKENDS.values() for c in backend.model_classes))
    raise ValueError(f"unsupported pipeline {class_name!r} in {model_path!r}; supported: {known}")


def load_backend(name: str, model_path: str, **kwargs: Any) -> ImageBackend:
    """Load backend ``name``'s image half for the model folder at ``model_path``.

    Raises:
        ValueError: unknown backend, or a folder made for another backend (named in the message).
    """
    if name not in GENERATE_BACKENDS:
        raise ValueError(f"unknown generate backend {name!r}; known: {', '.join(GENERATE_BACKENDS)}")
    class_name, needed = backend_for(model_path)
    if needed != name:
        raise ValueError(
            f"the model is a {class_name}, drawn by the {needed!r} backend; "
            f"set generate.backend: {needed} (got {name!r})"
        )
    return GENERATE_BACKENDS[name].load(model_path, **kwargs)
