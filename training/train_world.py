"""Train the ``shapes-sd`` and ``shapes-clip`` models on the procedural world (``training.world``).

Usage (the four stages that made the shipped ``shapes-sd``; see its model card)::

    python -m training.train_world sd --out runs/s1 --seed 0 --pool 12000 --vae-steps 900 --steps 1600 --lr 1e-3 --unet-channels 32 64
    python -m training.train_world sd --out runs/s2 --init runs/s1 --seed 1 --pool 12000 --vae-steps 0 --steps 800 --lr 5e-4 --few-step-share 0.5 --unet-channels 32 64
    python -m training.train_world sd --out runs/vae --init runs/s2 --seed 4 --pool 12000 --vae-steps 3000 --vae-lr 5e-4 --vae-decoder-only --steps 0 --unet-channels 32 64
    python -m training.train_world sd --out models/zoo/shapes-sd --init runs/s2 --vae-from runs/vae --seed 2 --pool 12000 --vae-steps 0 --steps 6000 --lr 1e-3 --few-step-share 0.8
    python -m training.train_world clip --out models/zoo/shapes-clip --seed 0 --pool 12000 --steps 700 --batch 96
    python -m training.train_world evaluate --sd models/zoo/shapes-sd --clip models/zoo/shapes-clip --steps 1 2 4

``sd`` trains a small ``AutoencoderKL`` (64x64 RGB <-> 16x16x4 latents) on world images,
then a CLIP text encoder and a cross-attention ``UNet2DConditionModel`` together with the
v-prediction diffusion loss on the VAE's latents, and saves a ``StableDiffusionPipeline``
(Euler scheduler, trailing timesteps, as SD-Turbo) with ``save_pretrained``.  ``clip``
trains a small ``CLIPModel`` (64x64 input) contrastively on world pairs, with mild blur and
noise on half of the images.  Both train on ``world.pairs(..., split_name="train")`` only;
``evaluate`` generates from held-out captions (``world.held_out``) and prints adherence
rates and CLIP scores as JSON.  A run is deterministic for its seed (fixed data order,
``torch.manual_seed``, 1 thread by default) on a given machine and library build.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterable
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from training import world

# Words of the world's captions, added to the tiny tokenizer as whole-word tokens.
WORLD_WORDS = [*world.SHAPES, *world.COLOURS, *world.SIZES, *world.POSITIONS, "background"]
LATENT_SIZE = 16  # 64x64 images, VAE scale factor 4
TEXT_HIDDEN = 64
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor defaults (OpenAI CLIP)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _tokenizer():
    from models.tiny_tokenizer import build_clip_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        return build_clip_tokenizer(folder, extra_words=WORLD_WORDS)


def _data(n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """``n`` training pairs: captions and images as float ``[n, 3, 64, 64]`` in [-1, 1]."""
    captions, images = [], []
    for text, image, _scene in world.pairs(n, seed, split_name="train"):
        captions.append(text)
        images.append(image)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return captions, pixels


def _token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to 77, exactly as ``StableDiffusionPipeline.encode_prompt`` makes them."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids


def _lr(base: float, step: int, total: int) -> float:
    """100 warm-up steps, then cosine decay to 0."""
    return base * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / total))


def _log(step: int, total: int, start: float, **values: float) -> None:
    parts = " ".join(f"{k}={v:.4f}" for k, v in values.items())
    print(f"step {step}/{total} {time.time() - start:.0f}s {parts}", flush=True)


def build_sd_components(tokenizer, unet_channels: tuple[int, ...] = (32, 64, 64)):
    """Untrained (seeded by the caller) VAE, text encoder, UNet and scheduler of shapes-sd.

    The UNet's deepest level must see the whole latent (16 -> 8 -> 4 for three levels): at
    t = 999 its input is almost pure noise, so where to put a shape ("on the left") can only
    come from the caption and the zero padding, which two levels saw too little of.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, mid_block_add_attention=False, norm_num_groups=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * len(unet_channels),
        up_block_types=("CrossAttnUpBlock2D",) * len(unet_channels),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=4, norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="trailing", steps_offset=1, prediction_type="v_prediction",
    )
    return vae, text_encoder, unet, scheduler


# A training loop past ~60 lines on purpose: its stages read best top to bottom, as the
# model card's recipe does.
def train_sd(args: argparse.Namespace) -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    start = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    captions, pixels = _data(args.pool, args.seed)
    tokenizer = _tokenizer()
    ids = _token_ids(tokenizer, captions)
    vae, text_encoder, unet, scheduler = build_sd_components(tokenizer, args.unet_channels)
    if args.init:  # continue from a saved shapes-sd folder; its UNet only when the architecture matches
        init = StableDiffusionPipeline.from_pretrained(args.init)
        vae, text_encoder = init.vae, init.text_encoder
    if args.vae_from:  # e.g. a decoder fine-tune of the same encoder: same latents, better pixels
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae")
        if tuple(init.unet.config.block_out_channels) == tuple(args.unet_channels):
            unet = init.unet
        else:
            print(f"--init: new UNet {tuple(args.unet_channels)} (saved one is "
                  f"{tuple(init.unet.config.block_out_channels)})", flush=True)

    # 1. VAE: reconstruction (MSE + L1) of the posterior mean + a small KL term.  With
    # --vae-decoder-only the encoder is frozen, so the latents (and a UNet trained on them) stay
    # valid: the decoder fine-tune Stable Diffusion's ft-MSE VAE did.
    if args.vae_decoder_only:
        vae.requires_grad_(False)
        vae.decoder.requires_grad_(True)
        vae.post_quant_conv.requires_grad_(True)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=args.vae_lr, weight_decay=0.0)
    vae.train()
    for step in range(args.vae_steps):
        batch = pixels[rng.integers(len(pixels), size=args.vae_batch)]
        for group in optimiser.param_groups:
            group["lr"] = _lr(args.vae_lr, step, args.vae_steps)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.mode()).sample  # the mean: sampling slowed learning a lot
        rec = F.mse_loss(recon, batch) + 0.5 * F.l1_loss(recon, batch)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = rec + args.kl_weight * kl
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == args.vae_steps - 1:
            _log(step, args.vae_steps, start, rec=rec.item(), kl=kl.item())
    vae.eval().requires_grad_(False)

    # 2. Latents of the pool (posterior means); scaling factor from their std
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(512)])
    if not args.vae_decoder_only:  # a decoder fine-tune keeps the latents, so their scale stays
        vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    scale = vae.config.scaling_factor
    print(f"latent std {means.std():.4f}, scaling_factor {scale:.4f}", flush=True)

    # 3. Text encoder + UNet, v-prediction on scaled latents (uniform timesteps)
    # cast: diffusers' top-level names type as its dummy placeholder classes (no attributes)
    noise_schedule = cast(Any, DDPMScheduler)(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction"
    )
    params = [*text_encoder.parameters(), *unet.parameters()]
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    text_encoder.train()
    unet.train()
    for step in range(args.steps):
        rows = torch.from_numpy(rng.integers(len(pixels), size=args.batch))
        latents = means[rows] * scale
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(rows),))
        if args.few_step_share > 0:  # the timesteps 1, 2 and 4 trailing Euler steps visit: 999, 749, 499, 249
            few = torch.rand(len(rows)) < args.few_step_share
            timesteps = torch.where(few, 249 + 250 * torch.randint(0, 4, (len(rows),)), timesteps)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        target = noise_schedule.get_velocity(latents, noise, timesteps)
        for group in optimiser.param_groups:
            group["lr"] = _lr(args.lr, step, args.steps)
        hidden = text_encoder(ids[rows])[0]
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=hidden).sample, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        if step % 100 == 0 or step == args.steps - 1:
            _log(step, args.steps, start, loss=loss.item())

    pipe = cast(Any, StableDiffusionPipeline)(  # the dummy-class typing again (see noise_schedule)
        vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(args.out, safe_serialization=True)
    print(json.dumps({"out": args.out, "wall_s": round(time.time() - start, 1)}), flush=True)


def build_clip_model(tokenizer):
    """Untrained (seeded by the caller) shapes-clip ``CLIPModel`` and its image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": TEXT_HIDDEN, "intermediate_size": 4 * TEXT_HIDDEN,
            "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": tokenizer.model_max_length, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": TEXT_HIDDEN, "intermediate_size": 4 * TEXT_HIDDEN, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": 64, "patch_size": 8,
        },
        projection_dim=TEXT_HIDDEN,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    return CLIPModel(config), processor


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur (Gaussian, sigma up to 1.5 px) and noise (std up to 0.06) half of a [0, 1] batch each."""
    n = len(images)
    sigma = torch.rand(n, generator=generator) * 1.5
    blur = torch.rand(n, generator=generator) < 0.5
    offsets = torch.arange(-3, 4, dtype=torch.float32)
    kernels = torch.exp(-(offsets[None] ** 2) / (2 * sigma.clamp(min=0.05)[:, None] ** 2))
    kernels = kernels / kernels.sum(1, keepdim=True)
    blurred = images
    for dim in (2, 3):  # separable blur, one kernel per image
        padded = F.pad(blurred, (3, 3, 0, 0) if dim == 3 else (0, 0, 3, 3), mode="replicate")
        windows = padded.unfold(dim, 7, 1)  # [..., 7]
        blurred = (windows * kernels[:, None, None, None, :]).sum(-1)
    images = torch.where(blur[:, None, None, None], blurred, images)
    noisy = torch.rand(n, generator=generator) < 0.5
    std = torch.rand(n, generator=generator) * 0.06 * noisy
    noise = torch.randn(images.shape, generator=generator)
    return (images + std[:, None, None, None] * noise).clamp(0, 1)


def _clip_pixels(images01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN)[None, :, None, None]
    std = torch.tensor(CLIP_STD)[None, :, None, None]
    return (images01 - mean) / std


def train_clip(args: argparse.Namespace) -> None:
    from models.builtin import _ClipFolder

    start = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    captions, pixels = _data(args.pool, args.seed)
    images01 = (pixels + 1) / 2
    tokenizer = _tokenizer()
    tokens = tokenizer(captions, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    model, processor = build_clip_model(tokenizer)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model.train()
    for step in range(args.steps):
        rows = torch.from_numpy(rng.choice(len(pixels), size=args.batch, replace=False))
        for group in optimiser.param_groups:
            group["lr"] = _lr(args.lr, step, args.steps)
        out = model(
            input_ids=tokens.input_ids[rows], attention_mask=tokens.attention_mask[rows],
            pixel_values=_clip_pixels(_augment(images01[rows], generator)),
        )
        labels = torch.arange(len(rows))
        loss = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == args.steps - 1:
            _log(step, args.steps, start, loss=loss.item(), scale=model.logit_scale.exp().item())
    _ClipFolder(model.eval(), tokenizer, processor).save_pretrained(args.out, safe_serialization=True)
    print(json.dumps({"out": args.out, "wall_s": round(time.time() - start, 1)}), flush=True)


def held_out_set(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` held-out (test split) captions and their true images."""
    captions, images = [], []
    for text, image, _scene in world.held_out(n, seed):
        captions.append(text)
        images.append(image)
    return captions, np.stack(images)


def generate(sd_path: str, captions: list[str], *, steps: int, guidance: float = 1.0, seed: int = 0) -> np.ndarray:
    """Images for ``captions`` through the project's ``PromptEncoder`` / ``ImageGenerator``."""
    from models.diffusion import ImageGenerator, PromptEncoder

    embeds = PromptEncoder(sd_path).encode(captions, None, guidance=[guidance] * len(captions), micro_batch=16)
    seeds = [seed + i for i in range(len(captions))]
    return ImageGenerator(sd_path).generate(
        embeds, seeds=seeds, width=64, height=64, steps=steps, guidance=guidance, micro_batch=16
    )


def clip_matched_vs_shuffled(clip_path: str, captions: list[str], images: Iterable[np.ndarray]) -> dict[str, float]:
    """Mean CLIP score of (image, own caption) and of (image, caption of the next image)."""
    from models.clip_score import ClipScorer

    scorer = ClipScorer(clip_path)
    image_list = list(images)
    matched = scorer.score(image_list, captions)
    shuffled = scorer.score(image_list, captions[1:] + captions[:1])
    return {"matched": float(matched.mean()), "shuffled": float(shuffled.mean())}


def evaluate(args: argparse.Namespace) -> None:
    from training.adherence import rate

    captions, truth = held_out_set(args.n, args.seed)
    report: dict = {"n": args.n, "seed": args.seed}
    if args.clip:
        report["clip_world_images"] = clip_matched_vs_shuffled(args.clip, captions, truth)
    if args.sd:
        for steps in args.steps:
            begin = time.time()
            images = generate(args.sd, captions, steps=steps, guidance=args.guidance)
            entry = {"adherence": rate(captions, images), "generate_s": round(time.time() - begin, 1)}
            if args.clip:
                entry["clip_generated"] = clip_matched_vs_shuffled(args.clip, captions, images)
            report[f"steps_{steps}"] = entry
            if args.save_grid:
                from PIL import Image

                rows = [np.concatenate(list(images[r : r + 8]), axis=1) for r in range(0, len(images) - 7, 8)][:4]
                grid = np.concatenate(rows)
                Image.fromarray(grid).save(f"{args.save_grid}_steps{steps}.png")
    print(json.dumps(report, indent=1), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train_world", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sd = commands.add_parser("sd", help="train the shapes-sd pipeline")
    sd.add_argument("--out", required=True)
    sd.add_argument("--seed", type=int, default=0)
    sd.add_argument("--pool", type=int, default=20000, help="training pairs rendered up front")
    sd.add_argument("--vae-steps", type=int, default=600)
    sd.add_argument("--steps", type=int, default=3000, help="text encoder + UNet steps")
    sd.add_argument("--vae-batch", type=int, default=16)
    sd.add_argument("--vae-from", help="a shapes-sd folder whose VAE replaces --init's (same encoder)")
    sd.add_argument("--vae-decoder-only", action="store_true",
                    help="train only the VAE decoder (latents unchanged; use with --init)")
    sd.add_argument("--batch", type=int, default=32)
    sd.add_argument("--vae-lr", type=float, default=1e-3)
    sd.add_argument("--lr", type=float, default=6e-4)
    sd.add_argument("--kl-weight", type=float, default=1e-4)
    sd.add_argument("--init", help="a shapes-sd folder to continue training from (use with --vae-steps 0)")
    sd.add_argument("--unet-channels", type=int, nargs="+", default=[32, 64, 64],
                    help="UNet block_out_channels, one per level (cross-attention at every level)")
    sd.add_argument("--few-step-share", type=float, default=0.0,
                    help="share of timesteps drawn from {249, 499, 749, 999} instead of uniform")
    clip = commands.add_parser("clip", help="train the shapes-clip model")
    clip.add_argument("--out", required=True)
    clip.add_argument("--seed", type=int, default=0)
    clip.add_argument("--pool", type=int, default=30000)
    clip.add_argument("--steps", type=int, default=2000)
    clip.add_argument("--batch", type=int, default=128)
    clip.add_argument("--lr", type=float, default=1e-3)
    ev = commands.add_parser("evaluate", help="adherence + CLIP numbers on held-out captions, as JSON")
    ev.add_argument("--sd")
    ev.add_argument("--clip")
    ev.add_argument("--n", type=int, default=200)
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--steps", type=int, nargs="+", default=[2])
    ev.add_argument("--guidance", type=float, default=1.0)
    ev.add_argument("--save-grid", help="path prefix for a PNG grid of the first 32 images")
    for command in (sd, clip, ev):
        command.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    # One thread: on a shared 2-core machine, 2 threads ran 10-20x slower (threads waiting on each other)
    torch.set_num_threads(args.threads)
    {"sd": train_sd, "clip": train_clip, "evaluate": evaluate}[args.command](args)


if __name__ == "__main__":
    main()
