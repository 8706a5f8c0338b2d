"""Prompt encoding and image generation with any diffusers text-to-image pipeline.

Loading is split the way the diffusers docs recommend for memory: the encoder
loads a pipeline without its denoiser and VAE and calls the pipeline's own
``encode_prompt``; the generator loads it without text encoders and denoises
from ``prompt_embeds``.  What differs between pipeline families (which
components, which ``encode_prompt`` signature, which embeddings) lives in
:data:`PIPELINE_FAMILIES`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.batching import in_fixed_chunks
from models.store import model_fingerprint

__all__ = ["PIPELINE_FAMILIES", "PipelineFamily", "PromptEncoder", "ImageGenerator", "to_uint8"]

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class PipelineFamily:
    """How one family of pipelines splits into text and image halves.

    Attributes:
        text_components: loaded by the encoder only.
        image_components: loaded by the generator only.
        encode: ``(pipeline, prompts, negative prompts, device) -> {name: tensor}``.
        uses_negative: whether classic classifier-free guidance needs negative embeds.
    """

    text_components: tuple[str, ...]
    image_components: tuple[str, ...]
    encode: Callable[..., dict[str, Any]]
    uses_negative: bool = True


def _encode_sd(pipe: Any, prompts: list[str], negatives: list[str], device: str) -> dict[str, Any]:
    embeds, negative = pipe.encode_prompt(
        prompts, device, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negatives
    )
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}


def _encode_sdxl(pipe: Any, prompts: list[str], negatives: list[str], device: str) -> dict[str, Any]:
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negatives
    )
    return {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def _encode_flux(pipe: Any, prompts: list[str], negatives: list[str], device: str) -> dict[str, Any]:
    # FLUX distils guidance into the transformer: no negative prompt, and
    # text_ids do not depend on the row, so the generator rebuilds them.
    embeds, pooled, _text_ids = pipe.encode_prompt(prompts, prompt_2=None, device=device, num_images_per_prompt=1)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


_SD = PipelineFamily(("text_encoder", "tokenizer"), ("unet", "vae"), _encode_sd)
_SDXL = PipelineFamily(
    ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"), ("unet", "vae"), _encode_sdxl
)
_FLUX = PipelineFamily(
    ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"), ("transformer", "vae"), _encode_flux, False
)

# Pipeline class name (from model_index.json) -> family.
PIPELINE_FAMILIES: dict[str, PipelineFamily] = {
    "StableDiffusionPipeline": _SD,
    "StableDiffusionXLPipeline": _SDXL,
    "FluxPipeline": _FLUX,
}


def _family(model_path: str) -> tuple[str, PipelineFamily]:
    index = json.loads((Path(model_path) / "model_index.json").read_text())
    name = index["_class_name"]
    if name not in PIPELINE_FAMILIES:
        raise ValueError(f"pipeline class {name} is not supported; supported: {sorted(PIPELINE_FAMILIES)}")
    family = PIPELINE_FAMILIES[name]
    present = {key for key, value in index.items() if not key.startswith("_") and value and value[0] is not None}
    return name, PipelineFamily(
        tuple(c for c in family.text_components if c in present),
        tuple(c for c in family.image_components if c in present),
        family.encode,
        family.uses_negative,
    )


def _load(model_path: str, *, drop: tuple[str, ...], device: str, dtype: str) -> Any:
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(
        model_path, dtype=getattr(torch, _DTYPES[dtype]), **{name: None for name in drop}
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Convert float images in ``[0, 1]`` to ``uint8`` with rounding, as diffusers does for PIL."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


class PromptEncoder:
    """The text half of a pipeline: prompts -> embeddings.

    Args:
        model_path: a local diffusers pipeline folder.
        device: torch device for the text encoders.
        dtype: weights' dtype (``float32``, ``float16``, ``bfloat16``).
    """

    def __init__(self, model_path: str, *, device: str = "cpu", dtype: str = "float32") -> None:
        self.pipeline_name, self.family = _family(model_path)
        self.device = device
        self.pipe = _load(model_path, drop=self.family.image_components, device=device, dtype=dtype)

    def encode(
        self, prompts: list[str], negative_prompts: list[str] | None, *, guidance: list[float], micro_batch: int = 4
    ) -> dict[str, np.ndarray]:
        """Return float32 numpy embeddings with the batch as the first axis.

        Negative embeddings are always computed for classic-guidance pipelines,
        so rows with ``guidance > 1`` can use classifier-free guidance.
        ``micro_batch`` is the fixed forward-pass shape (see ``models.batching``).
        """
        import torch

        prompts = list(prompts)
        negatives = [n or "" for n in (negative_prompts or [""] * len(prompts))]

        def compute(indices: np.ndarray) -> dict[str, np.ndarray]:
            with torch.no_grad():
                embeds = self.family.encode(
                    self.pipe, [prompts[i] for i in indices], [negatives[i] for i in indices], self.device
                )
            return {name: tensor.float().cpu().numpy() for name, tensor in embeds.items()}

        return in_fixed_chunks(compute, len(prompts), micro_batch)


class ImageGenerator:
    """The image half of a pipeline: embeddings + per-row seeds -> uint8 images.

    Args:
        model_path: a local diffusers pipeline folder.
        device: torch device for the denoiser and VAE.
        dtype: weights' dtype.
    """

    def __init__(self, model_path: str, *, device: str = "cpu", dtype: str = "float32") -> None:
        import torch

        self.pipeline_name, self.family = _family(model_path)
        self.device = device
        self.dtype = getattr(torch, _DTYPES[dtype])
        self.pipe = _load(model_path, drop=self.family.text_components, device=device, dtype=dtype)
        self.info = {
            "model_hash": model_fingerprint(model_path),
            "scheduler": type(self.pipe.scheduler).__name__,
            "pipeline": self.pipeline_name,
        }

    def check_inputs(self, embeds: dict[str, np.ndarray], seeds: list[int], width: int, height: int) -> None:
        """Raise ``ValueError`` on sizes the VAE cannot produce or mismatched batch lengths."""
        multiple = 8 * (2 if self.pipeline_name == "FluxPipeline" else 1)
        if width % multiple or height % multiple:
            raise ValueError(f"width and height must be multiples of {multiple}, got {width}x{height}")
        if any(len(value) != len(seeds) for value in embeds.values()):
            raise ValueError("every embedding needs one row per seed")

    def generate(
        self,
        embeds: dict[str, np.ndarray],
        *,
        seeds: list[int],
        width: int,
        height: int,
        steps: int,
        guidance: float,
        micro_batch: int = 4,
    ) -> np.ndarray:
        """Return ``uint8 [B, height, width, 3]`` images, one per seed.

        Each row draws its initial latents from its own ``torch.Generator`` and
        every forward pass has ``micro_batch`` rows, so a row's image does not
        depend on the other rows of the batch (see ``models.batching``).
        """
        # 1. check inputs
        self.check_inputs(embeds, seeds, width, height)
        if not self.family.uses_negative or guidance <= 1.0:
            embeds = {k: v for k, v in embeds.items() if not k.startswith("negative_")}

        def compute(indices: np.ndarray) -> np.ndarray:
            chunk = {name: value[indices] for name, value in embeds.items()}
            return self._denoise(chunk, [int(seeds[i]) for i in indices], width, height, steps, guidance)

        return in_fixed_chunks(compute, len(seeds), micro_batch)

    def _denoise(
        self, embeds: dict[str, np.ndarray], seeds: list[int], width: int, height: int, steps: int, guidance: float
    ) -> np.ndarray:
        import torch

        # 2. per-row generators and embeddings on the device
        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        tensors = {name: torch.from_numpy(np.ascontiguousarray(v)).to(self.device, self.dtype) for name, v in embeds.items()}
        # 3. denoise and decode with the pipeline's own loop
        with torch.no_grad():
            output = self.pipe(
                **tensors,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                output_type="np",
            )
        # 4. float [0, 1] -> uint8
        return to_uint8(np.asarray(output.images))
