"""The text half of a model folder that is not a diffusers pipeline: its own ``tokenizer/`` and
``text_encoder/`` (a transformers text model with a projection, e.g. ``CLIPTextModelWithProjection``).

``models.loading.load_text_half`` loads every folder's text half, for ``PromptEncoder``:
a diffusers pipeline (``models.families``) without its image components, or else a folder
that :func:`is_text_tower` accepts, as a :class:`TextTower`. A folder qualifies by its
``model_index.json`` alone: no diffusers version, and transformers ``tokenizer`` and
``text_encoder`` entries (the components diffusers would load the same way). Its
embedding is the pooled, projected one: ``{"text_embeds": [B, D]}``, negative prompts
not encoded (no classifier-free guidance). The GAN of ``models.gan`` is such a folder;
so is any new backend's folder written the same way.

A folder whose ``model_index.json`` says ``"text_output": "sequence"`` (see :data:`TEXT_OUTPUTS`)
hands over the token sequence as well: ``{"prompt_embeds": [B, 77, D], "text_embeds": [B, D]}``,
the encoder's last hidden states and its pooled (end-of-text) state, encoded without an
attention mask as diffusers' Stable Diffusion ``encode_prompt`` does. ``builtin:shapes-turbo``,
distilled from ``builtin:shapes-sd``, reads its teacher's sequence this way (``training.distil``).

Example:
    >>> tower, _report = load_text_tower(path, device="cpu", dtype="float32")
    >>> tower.encode(["a small red circle on the left, blue background"])["text_embeds"].shape
    torch.Size([1, 64])
"""

from __future__ import annotations

import os
from typing import Any

import torch

from models.families import read_model_index
from models.shared import no_fast_paths, torch_dtype

__all__ = ["EMBED_KEY", "SEQUENCE_KEY", "TEXT_OUTPUTS", "TextTower", "is_text_tower", "load_text_tower", "encode_tower"]

EMBED_KEY = "text_embeds"  # the pooled embedding every text tower hands to its image half
SEQUENCE_KEY = "prompt_embeds"  # the token sequence a "sequence" tower hands over too (SD's name for it)
# model_index.json "text_output": "pooled" (the default): {EMBED_KEY} projected, padding masked;
# "sequence": {SEQUENCE_KEY, EMBED_KEY}, last hidden states + pooled state, no attention mask (SD's encode_prompt)
TEXT_OUTPUTS = ("pooled", "sequence")


def is_text_tower(index: dict[str, Any]) -> bool:
    """Whether a parsed ``model_index.json`` describes a text-tower folder (see the module doc)."""
    return (
        "_diffusers_version" not in index
        and all(isinstance(index.get(name), list) and index[name][0] == "transformers"
                for name in ("tokenizer", "text_encoder"))
    )


class TextTower:
    """A folder's tokenizer and text encoder: prompts -> ``{"text_embeds": [B, D]}`` (projected, pooled).

    Args:
        model_path: a folder that :func:`is_text_tower` accepts.
        device: torch device.
        dtype: weights dtype.
        text_encoder_class: the transformers class named in ``model_index.json``.
        text_output: one of :data:`TEXT_OUTPUTS` (the module doc says what each hands over).

    Raises:
        ValueError: ``text_output`` is not one of :data:`TEXT_OUTPUTS`.

    Attributes:
        tokenizer: the folder's tokenizer (``PromptEncoder`` counts tokens with it).
        text_encoder: the frozen text encoder, in eval mode.
    """

    def __init__(
        self, model_path: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
        text_encoder_class: str = "CLIPTextModelWithProjection", text_output: str = "pooled",
    ) -> None:
        import transformers
        from transformers import AutoTokenizer

        if text_output not in TEXT_OUTPUTS:
            raise ValueError(f"text_output must be one of {TEXT_OUTPUTS}, got {text_output!r}")
        self.text_output = text_output
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(model_path, "tokenizer"))
        self.text_encoder = getattr(transformers, text_encoder_class).from_pretrained(
            os.path.join(model_path, "text_encoder"), dtype=dtype
        ).to(self.device).eval()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Text embeddings of ``prompts`` on the device, float in the encoder's dtype.

        Returns:
            ``"pooled"``: ``{"text_embeds": [B, D]}``, the projected pooled embedding.
            ``"sequence"``: ``{"prompt_embeds": [B, L, D], "text_embeds": [B, D]}``, the last
            hidden states (``L`` = the tokenizer's window, 77 for CLIP) and the pooled state.

        Prompts are padded to the tokenizer's window and truncated past it. The encoder is
        causal and pools the first end-of-text token, so no state of a prompt's own tokens
        sees the padding, and a prompt's embedding does not depend on the other prompts of
        the batch. (Without a mask, the pad positions' states depend on the prompt only.)
        """
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        input_ids = tokens.input_ids.to(self.device)
        if self.text_output == "sequence":
            output = self.text_encoder(input_ids=input_ids)  # no mask: the bytes of SD's encode_prompt
            return {SEQUENCE_KEY: output.last_hidden_state, EMBED_KEY: output.pooler_output}
        output = self.text_encoder(input_ids=input_ids, attention_mask=tokens.attention_mask.to(self.device))
        return {EMBED_KEY: output.text_embeds}


def load_text_tower(
    model_path: str, *, device: str, dtype: str | None, fast_paths: Any = None
) -> tuple[TextTower, dict[str, Any]]:
    """The text tower of ``model_path`` and its fast-path report (none applies: not a diffusers pipeline).

    Args:
        dtype: weights dtype name; None: float32.
    """
    index = read_model_index(model_path)
    tower = TextTower(
        model_path, device=device, dtype=torch_dtype(dtype or "float32"), text_encoder_class=index["text_encoder"][1],
        text_output=index.get("text_output", "pooled"),
    )
    return tower, no_fast_paths(device, tower.text_encoder.dtype, fast_paths, "not a diffusers pipeline (text tower)")


def encode_tower(tower: TextTower, prompts: list[str], negatives: list[str], device: Any) -> dict[str, torch.Tensor]:
    """``models.families.EncodeFn`` for a text tower: negatives are not encoded (no classifier-free guidance)."""
    return tower.encode(prompts)
