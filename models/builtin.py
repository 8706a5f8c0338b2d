"""Tiny, seeded diffusers pipelines built in code: the ``builtin:NAME`` model URIs.

They have the exact layout of real checkpoints (``model_index.json``, one folder per
component, safetensors weights) and are loaded through ``DiffusionPipeline.from_pretrained``
like SD-Turbo or SDXL-Turbo, but build in about a second and weigh a few MB, so tests
and CPU smoke runs exercise the real code path without a model hub.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from models.publish import is_complete, publish_once
from models.tiny_tokenizer import build_clip_tokenizer

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

# Shared by every tiny model: 64x64 images = latent sample_size 32 x vae_scale_factor 2
# (the VAE has two blocks, so it downsamples once).
TEXT_HIDDEN = 32
LATENT_SAMPLE_SIZE = 32


def _seeded(build: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``build(**kwargs)`` right after ``torch.manual_seed(0)`` (deterministic weights)."""
    import torch

    torch.manual_seed(0)
    return build(**kwargs)


def _tiny_vae():
    """A two-block ``AutoencoderKL`` with 4 latent channels (scale factor 2)."""
    from diffusers import AutoencoderKL

    return _seeded(
        AutoencoderKL,
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=LATENT_SAMPLE_SIZE * 2,
    )


def _tiny_text_encoder(tokenizer, *, with_projection: bool = False):
    """A 2-layer, 32-wide CLIP text encoder matching ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        projection_dim=TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _seeded(model_class, config=config)


def _turbo_scheduler():
    """Euler with SD-Turbo's schedule (trailing timesteps work from one step up)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
    )


def _tokenizer():
    """The code-built CLIP tokenizer (its files are rewritten by ``save_pretrained``)."""
    with tempfile.TemporaryDirectory() as folder:
        return build_clip_tokenizer(folder)


def build_tiny_sd_pipeline() -> StableDiffusionPipeline:
    """Build a tiny Stable Diffusion (1.5/2.1/Turbo layout) pipeline with seeded weights.

    Returns:
        A ``StableDiffusionPipeline`` whose default output is 64x64, without safety checker.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _tokenizer()
    unet = _seeded(
        UNet2DConditionModel,
        sample_size=LATENT_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=_tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_turbo_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    """Build a tiny SDXL(-Turbo layout) pipeline: two CLIP encoders, pooled + time embeds.

    Returns:
        A ``StableDiffusionXLPipeline`` whose default output is 64x64.
    """
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = _tokenizer()
    time_embed_dim = 8
    unet = _seeded(
        UNet2DConditionModel,
        sample_size=LATENT_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # 6 size/crop numbers, each embedded to time_embed_dim, + the pooled text embedding.
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN,
        cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states, concatenated
        norm_num_groups=32,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=_tiny_text_encoder(tokenizer),
        text_encoder_2=_tiny_text_encoder(tokenizer, with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_turbo_scheduler(),
        force_zeros_for_empty_prompt=True,
    )


class _ClipFolder:
    """A ``CLIPModel`` with its tokenizer and image processor, saved into one folder like hub checkpoints."""

    def __init__(self, model, tokenizer, image_processor) -> None:
        self.parts = (model, tokenizer, image_processor)

    def save_pretrained(self, folder: str, **kwargs: Any) -> None:
        model, tokenizer, image_processor = self.parts
        model.save_pretrained(folder, **kwargs)
        tokenizer.save_pretrained(folder)
        image_processor.save_pretrained(folder)


def build_tiny_clip() -> _ClipFolder:
    """Build a tiny ``CLIPModel`` (32-wide towers, 32x32 input) with seeded weights."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = _tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=TEXT_HIDDEN,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return _ClipFolder(_seeded(CLIPModel, config=config), tokenizer, processor)


BUILTIN_MODELS: dict[str, Callable[[], Any]] = {
    "tiny-sd": build_tiny_sd_pipeline,
    "tiny-sdxl": build_tiny_sdxl_pipeline,
    "tiny-clip": build_tiny_clip,
}


# Trained models shipped inside the package (``models/zoo/<name>``, save_pretrained layout); used in place.
ZOO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo")
SHIPPED_MODELS = ("shapes-sd", "shapes-clip", "shapes-gan", "shapes-lm")
# What a shipped CLIP scorer gives images of its world, from its model card's measured table
# (models/zoo/<name>/README.md, 200 held-out captions): (matched pairs, shuffled pairs), in
# clip_score units (100 * cosine). A run whose images score far below the matched level is
# drawing prompts outside that world.
SCORE_LEVELS: dict[str, tuple[float, float]] = {"shapes-clip": (92.1, 16.5)}


def check_builtin_name(name: str) -> None:
    """Return None when ``name`` is a built-in model (shipped in ``models/zoo`` or built in code).

    Raises:
        ValueError: it is not; the message lists the known names.
    """
    if name not in BUILTIN_MODELS and name not in SHIPPED_MODELS:
        known = ", ".join(sorted([*BUILTIN_MODELS, *SHIPPED_MODELS]))
        raise ValueError(f"unknown built-in model {name!r}; known: {known}")


def ensure_builtin_model(name: str, *, cache_dir: str) -> str:
    """Return the folder of a built-in model: a shipped one in place, a code-built one under ``cache_dir``.

    Code-built models are saved to ``cache_dir/builtin/<name>`` once.

    Args:
        name: a key of ``BUILTIN_MODELS``.
        cache_dir: node-local cache root; concurrent callers are serialised by a file lock.

    Returns:
        The local folder holding the saved pipeline (``model_index.json`` + components).

    Raises:
        ValueError: if ``name`` is not a known built-in model.
    """
    if name in SHIPPED_MODELS:
        folder = os.path.join(ZOO_DIR, name)
        if not is_complete(folder):
            raise FileNotFoundError(f"built-in model {name!r} is missing from this installation ({folder})")
        return folder
    check_builtin_name(name)

    def fill(folder: str) -> None:
        BUILTIN_MODELS[name]().save_pretrained(folder, safe_serialization=True)

    return publish_once(os.path.join(cache_dir, "builtin", name), fill)
