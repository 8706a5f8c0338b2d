"""What differs between diffusers pipeline classes (SD, SDXL, FLUX, SD3, Sana), as a registry by class name.

``PromptEncoder`` and ``ImageGenerator`` stay generic: they look up the pipeline's
``PipelineFamily`` (from ``model_index.json``'s ``_class_name``) to know which
components to leave out, how to call ``encode_prompt`` and which embedding keyword
arguments the pipeline call takes.  Only diffusers pipelines are families: a folder of
another kind (the GAN of ``models.gan``) has its text half loaded as a text tower
(``models.texttower``) and its images drawn by its own generate backend
(``models.backends``).  A leaf of ``models``: no torch, no other ``models`` module.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# (text half, prompts, negative prompts ("" = none), device) -> named tensors, batch first.
EncodeFn = Callable[[Any, list[str], list[str], Any], dict[str, Any]]


@dataclass(frozen=True)
class PipelineFamily:
    """How one pipeline class splits into a text half and an image half.

    Attributes:
        text_only_drop: components not needed to encode prompts (denoiser, VAE, ...).
        image_only_drop: components not needed once prompts are embedded (text encoders).
        encode: runs the pipeline's own ``encode_prompt`` and names its outputs.
        embed_keys: outputs of ``encode`` that the pipeline's ``__call__`` accepts.
        size_multiple: width and height must be multiples of this.
        mask_keys: those of ``embed_keys`` that are attention masks: handed to the pipeline as
            int64 (they travel as float32 like every embedding), not in the weights' dtype.
        call_kwargs: fixed keyword arguments of the pipeline's ``__call__`` when it gets embeddings.
        window_tokenizer: the text half's tokenizer whose window defines ``prompt_truncated``
            (see ``token_window``): the encoder that reads the longest part of the prompt.
        max_sequence_length: the family's cap on that window (diffusers' default
            ``max_sequence_length`` of its ``encode_prompt``); None: the tokenizer's own
            ``model_max_length`` only.
    """

    text_only_drop: tuple[str, ...]
    image_only_drop: tuple[str, ...]
    encode: EncodeFn
    embed_keys: tuple[str, ...]
    size_multiple: int = 8
    mask_keys: tuple[str, ...] = ()
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    window_tokenizer: str = "tokenizer"
    max_sequence_length: int | None = None

    def token_window(self, half: Any) -> tuple[Any, int]:
        """Return ``(tokenizer, tokens)``: the tokenizer of ``half`` that defines truncation and its window.

        The window is the tokenizer's ``model_max_length``, capped by ``max_sequence_length``;
        the family's ``encode`` encodes with exactly this window, so a prompt of more tokens
        (special tokens included) loses its tail there.
        """
        tokenizer = getattr(half, self.window_tokenizer)
        return tokenizer, self.window_of(tokenizer)

    def window_of(self, tokenizer: Any) -> int:
        """Return the window of ``window_tokenizer`` (loaded on its own, e.g. from its subfolder), in its tokens."""
        window = int(tokenizer.model_max_length)
        return min(window, self.max_sequence_length or window)


def _encode_sd(pipe: Any, prompts: list[str], negatives: list[str], device: Any) -> dict[str, Any]:
    """SD 1.x/2.x/Turbo: one CLIP encoder; negatives always encoded (classic CFG)."""
    prompt_embeds, negative_embeds = pipe.encode_prompt(
        prompts, device, 1, True, negative_prompt=negatives
    )
    return {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds}


def _encode_sdxl(pipe: Any, prompts: list[str], negatives: list[str], device: Any) -> dict[str, Any]:
    """SDXL(-Turbo): two CLIP encoders, pooled embeddings, zeros for empty negatives."""
    prompt_embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompts,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=negatives,
    )
    if pipe.config.get("force_zeros_for_empty_prompt", False):
        # diffusers zeroes the whole negative batch when negative_prompt is None; doing it
        # per row keeps a row's embedding independent of its batch-mates' negatives.
        empty = [index for index, negative in enumerate(negatives) if negative == ""]
        negative_embeds[empty] = 0
        negative_pooled[empty] = 0
    return {
        "prompt_embeds": prompt_embeds,
        "negative_prompt_embeds": negative_embeds,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def _encode_flux(pipe: Any, prompts: list[str], negatives: list[str], device: Any) -> dict[str, Any]:
    """FLUX: CLIP pooled + T5 sequence; guidance is an input of the transformer, not CFG.

    ``text_ids`` are not returned: FLUX builds them (all zeros) from the sequence length.
    """
    prompt_embeds, pooled, _text_ids = pipe.encode_prompt(
        prompt=prompts,
        prompt_2=None,
        device=device,
        num_images_per_prompt=1,
        max_sequence_length=_FLUX.token_window(pipe)[1],
    )
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def call_default(pipe: Any, name: str) -> Any:
    """Return the default of argument ``name`` of the pipeline class's ``__call__`` (what a plain call uses)."""
    return inspect.signature(type(pipe).__call__).parameters[name].default


def _encode_sana(pipe: Any, prompts: list[str], negatives: list[str], device: Any) -> dict[str, Any]:
    """Sana: Gemma 2 hidden states + attention masks, padded to ``max_sequence_length``.

    The prompt gets the complex human instruction that ``__call__`` prepends by default;
    negatives are encoded for every row (CFG at guidance > 1), without it, as the pipeline does.
    """
    embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
        prompts,
        True,
        negative_prompt=negatives,
        device=device,
        max_sequence_length=_SANA.token_window(pipe)[1],
        complex_human_instruction=call_default(pipe, "complex_human_instruction"),
    )
    return {
        "prompt_embeds": embeds,
        "prompt_attention_mask": mask,
        "negative_prompt_embeds": negative_embeds,
        "negative_prompt_attention_mask": negative_mask,
    }


def _encode_sd3(pipe: Any, prompts: list[str], negatives: list[str], device: Any) -> dict[str, Any]:
    """SD3: two CLIPs (sequence + pooled) and T5 (sequence); classic CFG, negatives always encoded.

    An empty negative is encoded as the text ``""`` (SD3 has no zeroing), row by row, so a
    row's embeddings never depend on its batch-mates' negatives.
    """
    prompt_embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompts,
        prompt_2=None,
        prompt_3=None,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=negatives,
        max_sequence_length=_SD3.token_window(pipe)[1],
    )
    return {
        "prompt_embeds": prompt_embeds,
        "negative_prompt_embeds": negative_embeds,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


_SAFETY = ("safety_checker", "feature_extractor")  # a safety filter is not our job here
_SD = PipelineFamily(
    text_only_drop=("unet", "vae", "image_encoder", *_SAFETY),
    image_only_drop=("text_encoder", "tokenizer", *_SAFETY),
    encode=_encode_sd,
    embed_keys=("prompt_embeds", "negative_prompt_embeds"),
)
_SDXL = PipelineFamily(
    text_only_drop=("unet", "vae", "image_encoder", *_SAFETY),
    image_only_drop=("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", *_SAFETY),
    encode=_encode_sdxl,
    embed_keys=(
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    ),
)
_FLUX = PipelineFamily(
    text_only_drop=("transformer", "vae", "image_encoder", "feature_extractor"),
    image_only_drop=("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
    encode=_encode_flux,
    embed_keys=("prompt_embeds", "pooled_prompt_embeds"),
    size_multiple=16,  # VAE factor 8 x 2x2 latent packing
    # Truncation is T5's: the whole sequence the transformer attends to comes from T5; CLIP
    # (77 tokens) only gives the pooled vector, so a prompt cut there but whole in T5 is whole.
    window_tokenizer="tokenizer_2",
    max_sequence_length=512,
)
_SD3 = PipelineFamily(
    text_only_drop=("transformer", "vae", "image_encoder", "feature_extractor"),
    image_only_drop=("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"),
    encode=_encode_sd3,
    embed_keys=(
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    ),
    size_multiple=16,  # VAE factor 8 x patch 2
    # Truncation is T5's: the sequence is CLIP's 77 tokens followed by T5's, so T5 reads the
    # whole prompt whenever its (longer) window holds it, whatever CLIP cut.
    window_tokenizer="tokenizer_3",
    max_sequence_length=256,
)

_SANA = PipelineFamily(
    text_only_drop=("transformer", "vae"),
    image_only_drop=("text_encoder", "tokenizer"),
    encode=_encode_sana,
    embed_keys=("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask"),
    size_multiple=32,  # the pipeline's own check (its DC-AE downsamples 32x)
    # Sana keeps max_sequence_length tokens of a prompt, BOS included (__call__'s default, 300):
    # the instruction's trailing space joins the prompt's first word, so the prompt keeps 299
    # besides BOS; the Gemma tokenizer's own model_max_length is unbounded.
    max_sequence_length=300,
    mask_keys=("prompt_attention_mask", "negative_prompt_attention_mask"),
    # no resizing to the aspect-ratio bins of its training sizes; "" is the default negative, but
    # embeddings and a negative prompt together are refused
    call_kwargs={"use_resolution_binning": False, "negative_prompt": None},
)

FAMILIES: dict[str, PipelineFamily] = {
    "StableDiffusionPipeline": _SD,
    "StableDiffusionXLPipeline": _SDXL,
    "FluxPipeline": _FLUX,
    "StableDiffusion3Pipeline": _SD3,
    "SanaPipeline": _SANA,
}


def token_window(class_name: str, half: Any) -> tuple[Any, int]:
    """Return ``(tokenizer, tokens)`` that define ``prompt_truncated`` for a loaded text half.

    A family's rule is ``PipelineFamily.token_window``; any other text half (a text tower,
    ``models.texttower``) has one tokenizer, ``half.tokenizer``, and its ``model_max_length``.
    """
    family = FAMILIES.get(class_name)
    if family is not None:
        return family.token_window(half)
    return half.tokenizer, int(half.tokenizer.model_max_length)


def read_model_index(model_path: str) -> dict[str, Any]:
    """Return the parsed ``model_index.json`` of a local model folder (diffusers, or ``models.gan``)."""
    with open(os.path.join(model_path, "model_index.json"), encoding="utf-8") as handle:
        return json.load(handle)


def family_for(model_path: str) -> tuple[str, PipelineFamily]:
    """Return ``(pipeline class name, family)`` for the model saved at ``model_path``.

    Raises:
        ValueError: the pipeline class has no entry in ``FAMILIES``.
    """
    class_name = read_model_index(model_path)["_class_name"]
    if class_name not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise ValueError(f"unsupported pipeline {class_name!r} in {model_path!r}; supported: {known}")
    return class_name, FAMILIES[class_name]


def none_overrides(model_path: str, names: tuple[str, ...]) -> dict[str, None]:
    """``{name: None}`` for those of ``names`` that the saved pipeline actually has."""
    present = read_model_index(model_path)
    return {name: None for name in names if name in present}
