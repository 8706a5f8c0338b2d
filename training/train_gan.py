"""Train and evaluate the ``shapes-gan`` text-conditional GAN on the procedural world (``training.world``).

Usage::

    python -m training.train_gan train --out models/zoo/shapes-gan --clip models/zoo/shapes-clip --seed 0
    python -m training.train_gan evaluate --gan models/zoo/shapes-gan --clip models/zoo/shapes-clip

``train`` copies the text tower of a ``CLIPModel`` folder (frozen), embeds the captions of
``world.pairs(pool, seed, split_name="train")`` once, and trains a generator and a
discriminator (``models.gan``) with the hinge loss. The discriminator is matching-aware
(Reed et al. 2016): it must call a real image with its own caption real, and the same image
with a mismatched caption fake, as it must call generated images fake. Half of the
mismatched captions are another row's caption, half are the row's own scene with one
attribute changed (background, a shape's colour, kind, size or position), so the
discriminator has to check every attribute, not just the look of the image. The caption
enters the discriminator through a projection term (Miyato & Koyama 2018) and the generator
through conditional batch norm. No pixel or feature reconstruction loss: the generator only
ever sees the discriminator's verdict. The generator saved is an exponential moving average
of the trained one, its batch-norm statistics re-estimated at the end.

``evaluate`` generates from held-out captions (``world.held_out``) through the same classes
the pipeline uses and prints adherence rates (``training.adherence.rate``), CLIP scores (matched
vs shuffled captions) and images/s, for the folder and for a random-weight generator of the
same architecture, as JSON. A run is deterministic for its seed on a given machine, thread
count and library build.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping

import numpy as np
import torch

from models.gan import GANImageGenerator, Generator, GeneratorConfig
from models.texttower import TextTower, load_text_tower
from training import world
from training.gan_parts import (
    MONITOR_SEED,
    Discriminator,
    discriminator_step,
    ema_update,
    log_step,
    perturbed_scene,
    recalibrate_batch_norm,
    save_gan_folder,
    text_statistics,
    text_tower_from_clip,
)


def _embed(encoder: TextTower, captions: list[str], chunk: int = 256) -> torch.Tensor:
    parts = [encoder.encode(captions[i : i + chunk])["text_embeds"] for i in range(0, len(captions), chunk)]
    return torch.cat(parts)


def _training_data(
    pool: int, seed: int, encoder: TextTower
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (uint8 ``[N, 3, 64, 64]``), caption embeddings and one-attribute-off caption embeddings."""
    rng = np.random.default_rng(seed + 1)
    captions, negatives, images = [], [], []
    for text, image, scene in world.pairs(pool, seed, split_name="train"):
        captions.append(text)
        negatives.append(world.caption(perturbed_scene(scene, rng)))
        images.append(image)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return pixels, _embed(encoder, captions), _embed(encoder, negatives)


def _grid(images: np.ndarray) -> np.ndarray:
    """The first 32 of uint8 ``[N, H, W, 3]`` images as a 4 x 8 grid."""
    return np.concatenate([np.concatenate(list(images[r : r + 8]), axis=1) for r in range(0, 32, 8)])


@torch.no_grad()
def _monitor(
    average: Generator, *, encoder_embed: tuple[list[str], torch.Tensor], seed: int, grid: str | None = None
) -> dict:
    """Adherence of a copy of the averaged generator (statistics re-estimated) on the progress captions."""
    from training.adherence import rate, score

    captions, text = encoder_embed
    generator = copy.deepcopy(average)
    recalibrate_batch_norm(generator, text, batches=8, batch=len(text), seed=seed)
    noise = torch.randn(len(text), generator.config.noise_dim, generator=torch.Generator().manual_seed(seed))
    images = generator(noise, text)  # own noise generator: monitoring leaves the training run unchanged
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if grid:
        from PIL import Image

        Image.fromarray(_grid(pixels)).save(grid)
    # judge_shape is on, so every rate is a number (none is None)
    rates = {key: round(value, 3) for key, value in rate(captions, list(pixels)).items() if value is not None}
    findings = [
        finding
        for caption, image in zip(captions, pixels)
        for finding in score(caption, image, judge_shape=False).shapes
    ]
    for check in ("position_ok", "size_ok"):
        rates[check] = round(float(np.mean([getattr(f, check) for f in findings])), 3)
    rates["found"] = round(float(np.mean([f.centroid is not None for f in findings])), 3)
    return rates


# A training loop past ~60 lines on purpose: its stages read best top to bottom, as the
# model card's recipe does.
def train(args: argparse.Namespace) -> dict:
    start = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    tokenizer, text_encoder = text_tower_from_clip(args.clip)
    with tempfile.TemporaryDirectory() as folder:  # the text half exactly as the encode stage will load it
        tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
        text_encoder.save_pretrained(os.path.join(folder, "text_encoder"))
        encoder = TextTower(folder)
        pixels, embeds, hard_negatives = _training_data(args.pool, args.seed, encoder)
        # Progress captions: test-split scenes of another seed than ``evaluate``'s (no peeking at its set)
        monitor_captions = [text for text, _image, _scene in world.held_out(64, MONITOR_SEED)]
        monitor = (monitor_captions, _embed(encoder, monitor_captions))
    print(f"data: {len(pixels)} pairs embedded in {time.time() - start:.0f}s", flush=True)
    config = GeneratorConfig(
        text_dim=embeds.shape[1], noise_dim=args.noise_dim, channels=tuple(args.g_channels)
    )
    generator = Generator(config)
    discriminator = Discriminator(text_dim=embeds.shape[1], channels=tuple(args.d_channels))
    mean, matrix = text_statistics(embeds)
    for whitening in (generator.text, discriminator.text):
        whitening.mean.copy_(mean)
        whitening.matrix.copy_(matrix)
    average = copy.deepcopy(generator).requires_grad_(False)
    betas = (0.0, 0.9)
    optimiser_g = torch.optim.Adam(generator.parameters(), lr=args.lr_g, betas=betas)
    optimiser_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr_d, betas=betas)
    batch = args.batch
    for step in range(args.steps):
        rows = torch.from_numpy(rng.integers(len(pixels), size=batch))
        real = pixels[rows].float() / 127.5 - 1
        text = embeds[rows]
        hard = torch.from_numpy(rng.random(batch) < args.hard_share)[:, None]
        wrong = torch.where(hard, hard_negatives[rows], text.roll(1, dims=0))
        fake = generator(torch.randn(batch, config.noise_dim), text)
        # 1. Discriminator: (real, own caption) real; (fake, own caption) and (real, wrong caption) fake
        losses = discriminator_step(discriminator, optimiser_d, real, fake, text, wrong)
        # 2. Generator: make (fake, own caption) score real
        loss_g = -discriminator(fake, text).mean()
        optimiser_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimiser_g.step()
        ema_update(average, generator, args.ema if step >= args.ema_start else 0.0)
        if step % 50 == 0 or step == args.steps - 1:
            log_step(step, args.steps, start, d_real=losses["real"].item(), d_fake=losses["fake"].item(),
                     d_wrong=losses["wrong"].item(), g=loss_g.item())
        if args.eval_every and (step + 1) % args.eval_every == 0:
            grid = f"{args.grids}_{step + 1:05d}.png" if args.grids else None
            rates = _monitor(average, encoder_embed=monitor, seed=args.seed, grid=grid)
            print(f"step {step + 1} monitor {rates}", flush=True)
    recalibrate_batch_norm(average, embeds, batches=32, batch=batch, seed=args.seed)
    save_gan_folder(args.out, generator=average, tokenizer=tokenizer, text_encoder=text_encoder)
    if args.save_discriminator:
        torch.save({"generator": generator.state_dict(), "discriminator": discriminator.state_dict()},
                   args.save_discriminator)
    result = {"out": args.out, "wall_s": round(time.time() - start, 1)}
    print(json.dumps(result), flush=True)
    return result


# --- evaluate ----------------------------------------------------------------------------------


def generate(gan_path: str, captions: list[str], *, seed: int = 0, micro_batch: int = 16) -> np.ndarray:
    """Images for ``captions`` through ``PromptEncoder`` and ``GANImageGenerator`` (seeds ``seed + i``)."""
    from models.diffusion import PromptEncoder

    guidance = [1.0] * len(captions)
    embeds = PromptEncoder(gan_path).encode(captions, None, guidance=guidance, micro_batch=micro_batch)
    seeds = [seed + i for i in range(len(captions))]
    return GANImageGenerator(gan_path).generate(embeds, seeds=seeds, width=64, height=64, micro_batch=micro_batch)


def random_weight_copy(gan_path: str, folder: str, *, seed: int = 0) -> str:
    """Copy the GAN folder ``gan_path`` to ``folder`` with a freshly initialised generator (same architecture)."""
    from models.gan import load_generator

    shutil.copytree(gan_path, folder, dirs_exist_ok=True)
    torch.manual_seed(seed)
    trained = load_generator(gan_path)
    fresh = Generator(trained.config).eval()
    fresh.text.load_state_dict(trained.text.state_dict())  # same input statistics; only learned weights are new
    encoder, _report = load_text_tower(gan_path, device="cpu", dtype=None)
    save_gan_folder(folder, generator=fresh, tokenizer=encoder.tokenizer, text_encoder=encoder.text_encoder)
    return folder


def _images_per_s(gan_path: str, captions: list[str], micro_batch: int) -> float:
    """Throughput of the generate half alone (embeddings precomputed), best of two runs."""
    from models.diffusion import PromptEncoder

    guidance = [1.0] * len(captions)
    embeds = PromptEncoder(gan_path).encode(captions, None, guidance=guidance, micro_batch=micro_batch)
    generator = GANImageGenerator(gan_path)
    best = np.inf
    for _ in range(2):
        begin = time.perf_counter()
        generator.generate(embeds, seeds=list(range(len(captions))), width=64, height=64, micro_batch=micro_batch)
        best = min(best, time.perf_counter() - begin)
    return len(captions) / best


def evaluate(args: argparse.Namespace) -> dict:
    from training.adherence import rate
    from training.train_world import clip_matched_vs_shuffled, held_out_set

    captions, _truth = held_out_set(args.n, args.seed)
    report: dict = {"n": args.n, "seed": args.seed, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as folder:
        for label, path in (("trained", args.gan), ("random_weights", random_weight_copy(args.gan, folder))):
            images = generate(path, captions)
            entry: dict[str, Mapping[str, float | None]] = {"adherence": rate(captions, images)}
            if args.clip:
                entry["clip"] = clip_matched_vs_shuffled(args.clip, captions, list(images))
            report[label] = entry
            if args.save_grid and label == "trained":
                from PIL import Image

                Image.fromarray(_grid(images)).save(args.save_grid)
    report["images_per_s"] = {
        f"micro_batch_{m}": round(_images_per_s(args.gan, captions[:64], m), 1) for m in (1, 16)
    }
    print(json.dumps(report, indent=1), flush=True)
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.train_gan", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tr = commands.add_parser("train", help="train shapes-gan and save the folder")
    tr.add_argument("--out", required=True)
    tr.add_argument("--clip", default="models/zoo/shapes-clip", help="CLIPModel folder: its text tower is copied")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--pool", type=int, default=12000, help="training pairs rendered up front")
    tr.add_argument("--steps", type=int, default=3600)
    tr.add_argument("--batch", type=int, default=32)
    tr.add_argument("--lr-g", type=float, default=2e-4)
    tr.add_argument("--lr-d", type=float, default=2e-4)
    tr.add_argument("--noise-dim", type=int, default=32)
    tr.add_argument("--g-channels", type=int, nargs="+", default=[256, 128, 64, 32, 16])
    tr.add_argument("--d-channels", type=int, nargs="+", default=[16, 32, 64, 128])
    tr.add_argument("--hard-share", type=float, default=0.5, help="mismatched captions one attribute off")
    tr.add_argument("--ema", type=float, default=0.995, help="decay of the generator's weight average")
    tr.add_argument("--ema-start", type=int, default=200, help="steps before averaging starts")
    tr.add_argument("--eval-every", type=int, default=0, help="print adherence every N steps (0: off)")
    tr.add_argument("--grids", help="with --eval-every: path prefix for a PNG grid of 32 progress images")
    tr.add_argument("--save-discriminator", help="also save both trained networks (torch.save) here")
    ev = commands.add_parser("evaluate", help="adherence, CLIP score and speed on held-out captions, as JSON")
    ev.add_argument("--gan", required=True)
    ev.add_argument("--clip")
    ev.add_argument("--n", type=int, default=200)
    ev.add_argument("--seed", type=int, default=1)
    ev.add_argument("--save-grid", help="PNG path for a grid of the first 32 images")
    for command in (tr, ev):
        command.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    # One thread: on a shared 2-core machine, 2 threads ran 10-20x slower (threads waiting on each other)
    torch.set_num_threads(args.threads)
    return {"train": train, "evaluate": evaluate}[args.command](args)


if __name__ == "__main__":
    main()
