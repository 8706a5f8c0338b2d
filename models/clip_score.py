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
        # The text window: the tokenizer's limit, or the position table's when it gives none.
        self.max_tokens = min(
            int(self.tokenizer.model_max_length), int(self.model.config.text_config.max_position_embeddings)
        )

    @torch.no_grad()
    def embed_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Return L2-normalised image embeddings ``[B, D]`` (float32) for uint8 ``[H, W, 3]`` images."""
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, prompts: list[str], *, fixed_length: bool = False) -> torch.Tensor:
        """Return L2-normalised text embeddings ``[B, D]`` (float32); long prompts are truncated.

        Args:
            fixed_length: pad every prompt to the text model's window (:attr:`max_tokens`)
                rather than to the longest prompt of the call, so the shapes, and a
                prompt's embedding, do not depend on the other prompts.
        """
        padding = {"padding": "max_length", "max_length": self.max_tokens} if fixed_length else {"padding": True}
        tokens = self.tokenizer(list(prompts), truncation=True, return_tensors="pt", **padding)
        features = self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()})
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @property
    def embedding_dim(self) -> int:
        """The length of an image embedding (the model's projection size)."""
        return int(self.model.config.projection_dim)

    def score(self, images: list[np.ndarray], prompts: list[str], *, micro_batch: int | None = None) -> np.ndarray:
        """Return the CLIP score of each (image, prompt) pair, float32 in [0, 100] (see :meth:`score_and_embed`)."""
        return self.score_and_embed(images, prompts, micro_batch=micro_batch)["score"]

    def score_and_embed(
        self, images: list[np.ndarray], prompts: list[str], *, micro_batch: int | None = None
    ) -> dict[str, np.ndarray]:
        """Return each (image, prompt) pair's CLIP score and the image's embedding, from one forward pass.

        Args:
            micro_batch: pairs per forward pass.  Given, every pass runs at one fixed
                shape (``models.batching.in_fixed_chunks``: the last chunk is padded by
                repeating a pair; prompts are padded to :attr:`max_tokens`), so a pair's
                score does not depend on the other pairs, their number or its position
                (on CPU the attention runs on torch's math kernel, see below).
                ``None``: one pass over all pairs, prompts padded to the longest.

        Returns:
            ``score``: float32 ``[B]`` in [0, 100]; ``embedding``: the L2-normalised image
            embeddings, float32 ``[B, embedding_dim]`` (the ones the score was computed with).

        Raises:
            ValueError: the numbers of images and prompts differ.
        """
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return {"score": np.zeros(0, dtype=np.float32),
                    "embedding": np.zeros((0, self.embedding_dim), dtype=np.float32)}
        if micro_batch is None:
            return self._score(list(images), list(prompts), fixed_length=False)
        from models.batching import in_fixed_chunks

        def chunk(indices: np.ndarray) -> dict[str, np.ndarray]:
            chunk_images, chunk_prompts = [images[i] for i in indices], [prompts[i] for i in indices]
            if self.device.type != "cpu":
                return self._score(chunk_images, chunk_prompts, fixed_length=True)
            # On CPU, torch's flash-attention kernel gave an image's embedding 1-ulp
            # differences by its position in the chunk at 2+ threads (CLIP's transposed,
            # non-contiguous q/k/v); the math kernel (batched matmul + softmax) did not,
            # at 1-8 threads and micro-batches 2-8.
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                return self._score(chunk_images, chunk_prompts, fixed_length=True)

        return in_fixed_chunks(chunk, len(images), micro_batch)

    def _score(self, images: list[np.ndarray], prompts: list[str], *, fixed_length: bool) -> dict[str, np.ndarray]:
        image_embeddings = self.embed_images(images)
        cosine = (image_embeddings * self.embed_texts(prompts, fixed_length=fixed_length)).sum(dim=-1)
        return {
            "score": (SCORE_SCALE * cosine.clamp(min=0)).cpu().numpy().astype(np.float32),
            "embedding": image_embeddings.cpu().numpy().astype(np.float32),
        }
