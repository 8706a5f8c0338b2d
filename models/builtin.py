"""The built-in models: small pipelines made of the real diffusers/transformers classes.

They exist so the demo and the tests exercise exactly the loading path of a
real checkpoint (``save_pretrained`` folder -> ``DiffusionPipeline.from_pretrained``)
without any download.  Weights are deterministic (seeded), not trained.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.store import file_lock, publish_folder

__all__ = ["BUILTIN_MODELS", "build_tiny_sd_pipeline", "build_tokenizer", "ensure_builtin_model"]

# Words the built-in tokenizer knows whole; anything else falls back to characters.
_WORDS = """
a an the of on in at to and with without near next behind above below left right top bottom middle center
small big large tiny huge one two three several many red green blue yellow orange purple pink brown black
white grey gray cyan magenta gold silver circle square triangle star rectangle shape shapes background
photo painting drawing picture image of cat dog bird car house tree flower sky sea mountain city street
person people man woman child portrait landscape sunset night day light dark bright colorful blurry sharp
high quality detailed simple style art""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode table (as in the original BPE code)."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = visible[:]
    extra = 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(visible, (chr(c) for c in codes)))


def build_tokenizer(folder: Path) -> Any:
    """Write a small CLIP BPE vocabulary (bytes + whole words) to ``folder`` and load it."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab: list[str] = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    seen = set(vocab)
    for word in dict.fromkeys(_WORDS):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            merged += piece
            if rule not in merges:
                merges.append(rule)
            if merged not in seen:
                seen.add(merged)
                vocab.append(merged)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77)


def build_tiny_sd_pipeline() -> Any:
    """Return a tiny Stable-Diffusion-layout pipeline (64x64 images, ~1 MB of weights)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_tokenizer(Path(scratch))
    # 1. text encoder: a small CLIP text transformer
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # 2. denoiser: a two-level UNet with cross-attention on the text embeddings
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    # 3. VAE: two levels, so latents are half the image size (32 -> 64 pixels)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    # 4. scheduler: Euler with trailing timesteps, as the one-step Turbo models use
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


BUILTIN_MODELS: dict[str, Callable[[], Any]] = {"tiny-sd": build_tiny_sd_pipeline}


def ensure_builtin_model(name: str, *, cache_dir: str) -> str:
    """Return the folder of a built-in model, building and saving it the first time.

    Raises:
        ValueError: ``name`` is not a built-in model.
    """
    if name not in BUILTIN_MODELS:
        raise ValueError(f"model.uri builtin:{name}: unknown built-in model; known: {sorted(BUILTIN_MODELS)}")
    target = Path(cache_dir) / "builtin" / name
    if (target / "model_index.json").is_file():
        return str(target)
    with file_lock(target.with_name(name + ".lock")):
        if not (target / "model_index.json").is_file():
            staging = target.with_name(f".{name}.{uuid.uuid4().hex[:8]}")
            BUILTIN_MODELS[name]().save_pretrained(staging, safe_serialization=True)
            publish_folder(staging, target)
    return str(target)
