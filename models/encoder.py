"""The text half of a model folder: prompts in, embeddings out (``PromptEncoder``).

Embeddings travel to the image half (``models.diffusion.ImageGenerator`` or another
``models.backends`` entry) as float32 numpy arrays with the batch as first axis. Every
forward pass runs in fixed chunks of ``micro_batch`` rows (``models.batching``), so a
row's embeddings never depend on its batch.
"""

from __future__ import annotations

import numpy as np
import torch

from models.batching import in_fixed_chunks
from models.families import token_window
from models.fastpaths import FastPaths, weights_dtype
from models.loading import load_text_half

__all__ = ["PromptEncoder"]


class PromptEncoder:
    """The text half of a pipeline: prompts in, embeddings out.

    Args:
        model_path: local diffusers folder (see ``models.store.resolve_model_path``), or a
            folder with its own text tower, such as a ``models.gan`` one (see ``load_text_half``).
        device: torch device to run on.
        dtype: weights dtype name (``float32``, ``float16``, ``bfloat16``); None: chosen by
            ``fast_paths.dtype`` (float32 on CPU, bf16 on CUDA by default).
        fast_paths: fast-path settings (``models.fastpaths``); None: the defaults.

    Attributes:
        fast_paths_applied: what ``apply_fast_paths`` applied and skipped, for logs.
    """

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        fast_paths: FastPaths | None = None,
    ) -> None:
        self.device = torch.device(device)
        fast_paths = fast_paths or FastPaths()
        self.pipeline_class, self.pipe, self._encode, self.fast_paths_applied = load_text_half(
            model_path, device=device, dtype=weights_dtype(fast_paths, device, dtype), fast_paths=fast_paths
        )
        self._window_tokenizer, self._window = token_window(self.pipeline_class, self.pipe)

    @torch.no_grad()
    def encode(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None,
        *,
        guidance: list[float],
        micro_batch: int = 1,
    ) -> dict[str, np.ndarray]:
        """Encode a batch of prompts with the pipeline's own ``encode_prompt``.

        Args:
            prompts: one prompt per row.
            negative_prompts: one per row (``""`` or ``None`` entries: no negative), or None.
            guidance: per-row guidance scale; checked for length. Negative embeddings are
                computed for every row of a classic-CFG pipeline whatever its guidance, so
                a row's embeddings never depend on its batch-mates.
            micro_batch: rows per forward pass (see the module docstring).

        Returns:
            float32 arrays, batch first: ``prompt_embeds`` and, per pipeline family,
            ``negative_prompt_embeds``, ``pooled_prompt_embeds``,
            ``negative_pooled_prompt_embeds``; for a GAN folder ``text_embeds`` only.
        """
        # 1. Check inputs
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        negatives = [negative or "" for negative in (negative_prompts or [""] * len(prompts))]
        if not (len(prompts) == len(negatives) == len(guidance)):
            raise ValueError(
                f"prompts ({len(prompts)}), negative_prompts ({len(negatives)}) and "
                f"guidance ({len(guidance)}) must have one entry per row"
            )

        # 2. Encode fixed-size chunks with the family's call convention; hand over as
        #    float32 numpy, batch first
        def compute(rows: np.ndarray) -> dict[str, np.ndarray]:
            tensors = self._encode(
                self.pipe, [prompts[i] for i in rows], [negatives[i] for i in rows], self.device
            )
            return {key: value.float().cpu().numpy() for key, value in tensors.items()}

        return in_fixed_chunks(compute, len(prompts), micro_batch)

    @property
    def max_tokens(self) -> int:
        """Tokens per prompt the family's window keeps when encoding (``models.families.token_window``).

        Longer prompts lose their tail in ``encode``: for SD/SDXL 77 (CLIP), for FLUX 512
        and SD3 256 T5 tokens (at most the T5 tokenizer's ``model_max_length``), for Sana 300 Gemma tokens.
        """
        return self._window

    def token_counts(self, prompts: list[str]) -> list[int]:
        """Count the window tokenizer's tokens per prompt (``max_tokens``' tokenizer), without truncation.

        Args:
            prompts: one prompt per row.

        Returns:
            the number of token ids per prompt, special tokens (BOS/EOS) included; a
            count above ``max_tokens`` means ``encode`` drops the prompt's tail.
        """
        if not prompts:
            return []
        # verbose=False: no "sequence length is longer than the maximum" warning, counting
        # over-long prompts is the point here
        token_ids = self._window_tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in token_ids]
