"""CLIP score of images against their prompts: any transformers ``CLIPModel`` folder.

The score is the customary one (Hessel et al. 2021, torchmetrics ``CLIPScore``):
``100 * max(cos(image embedding, text embedding), 0)``.  The folder holds the
model, its tokenizer and its image processor (``save_pretrained`` layout), as
the hub's CLIP checkpoints do; the processor's resize and normalisation are
the model's own.  Plain torch/transformers, no Ray.

Example:
    >>> scorer = ClipScorer(resolve_model_path("builtin:tiny-clip", cache_dir="/tmp/c"))
    >>> scorer.score(images, ["a red circle", "a blue square"])  # one float per pair
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ClipScorer"]

SCORE_SCALE = 100.0


class ClipScorer:
    """Load a CLIP model once; score (image, prompt) pairs.

    Args:
        model_path: local folder with a ``CLIPModel``, tokenizer and image processor.
        device: torch device.
        dtype: weights dtype name (``float32``, ``float16``, ``bfloat16``).
    """

    def __init__(self, model_path: str, *, device: str = "cpu", dtype: str = "float32") -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.image_processor = AutoImageProcessor.from_pretrained(model_path)

    @torch.no_grad()
    def embed_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Return L2-normalised image embeddings ``[B, D]`` (float32) for uint8 ``[H, W, 3]`` images."""
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        """Return L2-normalised text embeddings ``[B, D]`` (float32); long prompts are truncated."""
        tokens = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        features = self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()})
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def score(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        """Return the CLIP score of each (image, prompt) pair, float32 in [0, 100]."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return np.zeros(0, dtype=np.float32)
        cosine = (self.embed_images(images) * self.embed_texts(prompts)).sum(dim=-1)
        return (SCORE_SCALE * cosine.clamp(min=0)).cpu().numpy().astype(np.float32)
