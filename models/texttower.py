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

__all__ = ["EMBED_KEY", "TextTower", "is_text_tower", "load_text_tower", "encode_tower"]

EMBED_KEY = "text_embeds"  # the one embedding a text tower hands to its image half


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

    Attributes:
        tokenizer: the folder's tokenizer (``PromptEncoder`` counts tokens with it).
        text_encoder: the frozen text encoder, in eval mode.
    """

    def __init__(
        self, model_path: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
        text_encoder_class: str = "CLIPTextModelWithProjection",
    ) -> None:
        import transformers
        from transformers import AutoTokenizer

        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(model_path, "tokenizer"))
        self.text_encoder = getattr(transformers, text_encoder_class).from_pretrained(
            os.path.join(model_path, "text_encoder"), dtype=dtype
        ).to(self.device).eval()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Pooled, projected text embeddings of ``prompts``: ``{"text_embeds": [B, D]}`` on the device.

        Prompts are padded to the tokenizer's window and truncated past it; the pooled token
        (the first end-of-text) does not see the padding, so a prompt's embedding does not
        depend on the other prompts of the batch.
        """
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        )
        output = self.text_encoder(
            input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
        )
        return {EMBED_KEY: output.text_embeds}


def load_text_tower(
    model_path: str, *, device: str, dtype: str | None, fast_paths: Any = None
) -> tuple[TextTower, dict[str, Any]]:
    """The text tower of ``model_path`` and its fast-path report (none applies: not a diffusers pipeline).

    Args:
        dtype: weights dtype name; None: float32.
    """
    text_encoder_class = read_model_index(model_path)["text_encoder"][1]
    tower = TextTower(
        model_path, device=device, dtype=torch_dtype(dtype or "float32"), text_encoder_class=text_encoder_class
    )
    return tower, no_fast_paths(device, tower.text_encoder.dtype, fast_paths, "not a diffusers pipeline (text tower)")


def encode_tower(tower: TextTower, prompts: list[str], negatives: list[str], device: Any) -> dict[str, torch.Tensor]:
    """``models.families.EncodeFn`` for a text tower: negatives are not encoded (no classifier-free guidance)."""
    return tower.encode(prompts)
