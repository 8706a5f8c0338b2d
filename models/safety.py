"""The pipeline's own NSFW safety checker, run on finished images outside the pipeline.

``models.families`` drops ``safety_checker`` and ``feature_extractor`` from both halves,
so ``ImageGenerator.generate`` never runs a checker. ``ImageGenerator`` still loads them
when the model folder has both (Stable Diffusion 1.x/2.x checkpoints ship one), then
takes them out of the pipeline with ``SafetyChecker.detach_from``: the pipeline stays
exactly the one ``generate`` always used, and ``generate_checked`` asks the checker
about each finished micro-batch the way ``StableDiffusionPipeline.run_safety_checker``
does (PIL images -> ``feature_extractor`` -> ``safety_checker``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from models.families import read_model_index

# Pipeline components a safety checker needs; one without the other is not usable.
SAFETY_COMPONENTS = ("safety_checker", "feature_extractor")


def has_safety_checker(model_path: str) -> bool:
    """Whether the saved pipeline has both a ``safety_checker`` and a ``feature_extractor``."""
    index = read_model_index(model_path)
    return all(
        isinstance(index.get(name), list) and index[name][0] is not None for name in SAFETY_COMPONENTS
    )


class SafetyChecker:
    """A pipeline's ``safety_checker`` and ``feature_extractor``, usable on numpy images.

    Args:
        checker: the pipeline's safety checker (e.g. ``StableDiffusionSafetyChecker``);
            called as ``checker(images=..., clip_input=...)`` and returning
            ``(images, has_nsfw_concepts)`` with the flagged images blacked out.
        feature_extractor: the image processor that makes the checker's ``clip_input``.
        device: where ``clip_input`` goes.
        dtype: dtype of ``clip_input`` (the pipeline's weights dtype).
    """

    def __init__(
        self, checker: Any, feature_extractor: Any, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.checker = checker
        self.feature_extractor = feature_extractor
        self.device = device
        self.dtype = dtype

    @classmethod
    def detach_from(
        cls, pipe: DiffusionPipeline, *, device: torch.device, dtype: torch.dtype
    ) -> SafetyChecker | None:
        """Take the safety components out of ``pipe`` (set to None there) and wrap them.

        Returns:
            The checker, or None (``pipe`` unchanged) when ``pipe`` has none.
        """
        checker = getattr(pipe, "safety_checker", None)
        feature_extractor = getattr(pipe, "feature_extractor", None)
        if checker is None or feature_extractor is None:
            return None
        pipe.register_modules(**{name: None for name in SAFETY_COMPONENTS})
        return cls(checker, feature_extractor, device=device, dtype=dtype)

    @torch.no_grad()
    def check(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the checker on float images in [0, 1], ``[B, H, W, 3]``, all finite.

        Returns:
            ``(images, flagged)``: a copy of ``images`` with the flagged rows set to 0
            (black, as the checker does inside the pipeline) and a bool array per row.
        """
        pil_images = VaeImageProcessor.numpy_to_pil(images)
        clip_input = self.feature_extractor(pil_images, return_tensors="pt").pixel_values
        checked, flagged = self.checker(
            images=images.copy(), clip_input=clip_input.to(self.device, self.dtype)
        )
        return np.asarray(checked, dtype=images.dtype), np.asarray(flagged, dtype=bool)
