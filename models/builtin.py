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
from models.tiny_lm import build_tiny_lm
from models.tiny_sana import build_tiny_sana_pipeline
from models.tiny_tokenizer import build_clip_tokenizer, build_t5_tokenizer

if TYPE_CHECKING:
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

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


def _flow_vae():
    """The tiny VAE of the flow-matching families (FLUX, SD3): no quant convs, with a shift factor."""
    from diffusers import AutoencoderKL

    return _seeded(
        AutoencoderKL,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def _tiny_t5(tokenizer, d_model: int):
    """A 1-layer ``T5EncoderModel`` of width ``d_model`` for ``tokenizer`` (FLUX's and SD3's sequence encoder)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1, num_heads=4,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return _seeded(T5EncoderModel, config=config)


def _flow_scheduler(**config: Any):
    """``FlowMatchEulerDiscreteScheduler`` with ``config`` (the real checkpoints' shift settings)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def build_tiny_flux_pipeline() -> FluxPipeline:
    """Build a tiny FLUX.1-dev layout pipeline: CLIP pooled + T5 sequence, guidance-embedded transformer.

    Returns:
        A ``FluxPipeline`` (4 latent channels packed 2x2, T5 window ``T5_WINDOW`` tokens).
    """
    from diffusers import FluxPipeline, FluxTransformer2DModel

    tokenizer, t5_tokenizer = _tokenizer(), build_t5_tokenizer()
    transformer = _seeded(
        FluxTransformer2DModel,
        in_channels=16,  # 4 latent channels, packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,  # T5's width
        pooled_projection_dim=TEXT_HIDDEN,  # CLIP's pooled output
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    return FluxPipeline(
        scheduler=_flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
        vae=_flow_vae(),
        text_encoder=_tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_t5(t5_tokenizer, TEXT_HIDDEN),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def build_tiny_sd3_pipeline() -> StableDiffusion3Pipeline:
    """Build a tiny SD3 layout pipeline: two CLIP-with-projection encoders + T5, an MMDiT transformer.

    The sequence is both CLIPs' hidden states (2 x 32 wide) padded to T5's width (64), then T5's
    tokens; the pooled input is both CLIPs' projections (2 x 32).

    Returns:
        A ``StableDiffusion3Pipeline`` (4 latent channels, patch 2, T5 window ``T5_WINDOW`` tokens).
    """
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, t5_tokenizer = _tokenizer(), build_t5_tokenizer()
    transformer = _seeded(
        SD3Transformer2DModel,
        sample_size=LATENT_SAMPLE_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=2 * TEXT_HIDDEN,
        caption_projection_dim=16,
        pooled_projection_dim=2 * TEXT_HIDDEN,
        pos_embed_max_size=64,  # up to 256x256 images
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=_flow_scheduler(shift=3.0),
        vae=_flow_vae(),
        text_encoder=_tiny_text_encoder(tokenizer, with_projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_text_encoder(tokenizer, with_projection=True),
        tokenizer_2=tokenizer,
        text_encoder_3=_tiny_t5(t5_tokenizer, 2 * TEXT_HIDDEN),
        tokenizer_3=t5_tokenizer,
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
    "tiny-flux": build_tiny_flux_pipeline,
    "tiny-sd3": build_tiny_sd3_pipeline,
    "tiny-clip": build_tiny_clip,
    "tiny-sana": build_tiny_sana_pipeline,  # an LLM-encoded family: Gemma 2 text encoder
    "tiny-lm": build_tiny_lm,  # a random-weight causal LM for the LLM prompt stage's tests (models.tiny_lm)
}


# Trained models shipped inside the package (``models/zoo/<name>``, save_pretrained layout); used in place.
ZOO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zoo")
SHIPPED_MODELS = ("shapes-sd", "shapes-clip", "shapes-gan", "shapes-turbo", "shapes-lm")
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
