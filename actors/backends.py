"""Generate-stage backends by name (the spec's ``generate.backend``): what turns embeddings into images.

Every backend loads from a model folder and returns an object with the interface of
``models.diffusion.ImageGenerator``: ``generate_checked(embeds, seeds=, width=, height=,
steps=, guidance=, micro_batch=) -> (uint8 images, {row: (status, reason)})``, ``info``
(``model_hash``, ``scheduler``, ``pipeline``) and ``fast_paths_applied``. Both consume the
encode stage's embeddings of the same folder and give the same uint8 batch, so the later
stages cannot tell them apart. This module stays light (``pipelines.spec`` lists its names
without importing torch); a backend's model code is imported when it loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["GenerateBackend", "GENERATE_BACKENDS", "load_backend"]


@dataclass(frozen=True)
class GenerateBackend:
    """One way to draw images.

    Attributes:
        load: ``(model_path, device=, dtype=, fast_paths=) -> generator`` (see the module doc).
        one_pass: draws in one forward pass without guidance: a row's ``steps`` and ``guidance``
            are ignored, and the output records ``steps=1``, ``guidance=1.0`` (no guidance).
    """

    load: Callable[..., Any]
    one_pass: bool = False


def _diffusers(model_path: str, **kwargs: Any) -> Any:
    from models.diffusion import ImageGenerator

    return ImageGenerator(model_path, **kwargs)


def _gan(model_path: str, **kwargs: Any) -> Any:
    from models.gan import GANImageGenerator

    return GANImageGenerator(model_path, **kwargs)


GENERATE_BACKENDS: dict[str, GenerateBackend] = {
    "diffusers": GenerateBackend(load=_diffusers),
    "gan": GenerateBackend(load=_gan, one_pass=True),
}


def load_backend(name: str, model_path: str, **kwargs: Any) -> Any:
    """Load backend ``name`` for the model folder at ``model_path``.

    Raises:
        ValueError: unknown backend, or a folder made for another backend (named in the message).
    """
    from models.families import family_for

    if name not in GENERATE_BACKENDS:
        raise ValueError(f"unknown generate backend {name!r}; known: {', '.join(GENERATE_BACKENDS)}")
    class_name, family = family_for(model_path)
    if family.backend != name:
        raise ValueError(
            f"the model is a {class_name}, drawn by the {family.backend!r} backend; "
            f"set generate.backend: {family.backend} (got {name!r})"
        )
    return GENERATE_BACKENDS[name].load(model_path, **kwargs)
