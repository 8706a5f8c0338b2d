"""Distil ``shapes-sd`` into the one-pass ``shapes-turbo``: the teacher-data cache and the training run (issue 21).

Usage::

    python -m training.distil data --out /tmp/teacher.npz --n 64 --steps 1

``data`` draws ``n`` training-split captions of the procedural world (``world.pairs(n, seed,
split_name="train")``: held-out triples never appear), gives caption ``i`` the noise seed
``seed * SEED_STRIDE + i``, and draws the teacher's image for each (caption, seed) through the
same classes the pipeline runs (``PromptEncoder`` + ``ImageGenerator``, guidance 1.0, 64x64).
The cache is one ``.npz``:

- ``captions``: ``[n]`` str; ``seeds``: ``[n]`` int64 (the teacher's latent noise is
  ``torch.Generator().manual_seed(seed)``, so a student can be handed the very same noise);
- ``images``: ``[n, 64, 64, 3]`` uint8, the teacher's images (the regression target, as in
  ADD, Sauer et al. 2023, and DMD, Yin et al. 2024);
- ``prompt_embeds``: ``[n, 77, 64]`` float16, the teacher's text-encoder hidden states (what
  the student is conditioned on), unless ``--no-embeds``;
- ``steps``, ``seed``: the teacher's steps and the caption seed.

``train`` distils those images into a one-pass student (``models.gan.Generator`` with
cross-attention over the teacher's token states, ``models.gan.CrossAttention``) and writes a
folder the ``gan`` backend loads (``builtin:shapes-turbo``)::

    python -m training.distil train --data /tmp/teacher.npz --out models/zoo/shapes-turbo

The student sees the teacher's own text encoder (copied, frozen): its last hidden states
(``prompt_embeds``) through cross-attention and its pooled state through conditional batch
norm. Its loss is the sum of

- a **regression** term: L1 between the student's and the teacher's image for the same
  caption, at full size and average-pooled by 2 and 4 (the coarse layout weighs more). This
  is the distillation loss of ADD (Sauer et al. 2023, "Adversarial Diffusion Distillation")
  and the regression loss of DMD (Yin et al. 2024, "One-step Diffusion with Distribution
  Matching Distillation");
- after a warm-up, an **adversarial** term (hinge loss, weight ``--adv``): the matching-aware
  projection discriminator of ``training.gan_parts`` (Reed et al. 2016; Miyato & Koyama
  2018) judges the student's images against the world's true renders of the same captions,
  with mismatched captions (another row's, or one attribute off) as extra fakes. As in ADD,
  the discriminator's real images are data, not the teacher's, so it sharpens edges and
  kinds beyond what the regression alone gives.

The generator saved is an exponential moving average of the trained one, its batch-norm
statistics re-estimated at the end (as ``training.train_gan``). Evaluate a folder with
``python -m training.train_gan evaluate --gan FOLDER``.

The numbers are deterministic for a seed on a given machine, thread count and library build.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training import world

__all__ = ["SEED_STRIDE", "TEACHER", "teacher_data", "save_cache", "load_cache", "train", "main"]

SEED_STRIDE = 1_000_000  # caption seed s gives noise seeds s * SEED_STRIDE + i: caches of other seeds never share noise
TEACHER = "builtin:shapes-sd"


def teacher_data(
    n: int, *, seed: int = 0, steps: int = 1, micro_batch: int = 16, embeds: bool = True, cache_dir: str = "/tmp"
) -> dict[str, np.ndarray]:
    """Draw ``n`` (caption, noise seed, teacher image) triples, see the module docstring.

    Returns:
        The arrays of the cache (``captions``, ``seeds``, ``images``, ``prompt_embeds`` when
        ``embeds``, ``steps``, ``seed``), plus ``seconds``: the wall time of encode + generate.

    Raises:
        ValueError: ``n`` < 1 or ``steps`` < 1.
    """
    from models.diffusion import ImageGenerator, PromptEncoder
    from models.store import resolve_model_path

    if n < 1 or steps < 1:
        raise ValueError(f"n and steps must be >= 1, got n={n}, steps={steps}")
    captions = [text for text, _image, _scene in world.pairs(n, seed, split_name="train")]
    seeds = [seed * SEED_STRIDE + i for i in range(n)]
    path = resolve_model_path(TEACHER, cache_dir=cache_dir)
    encoder, generator = PromptEncoder(path), ImageGenerator(path)
    start = time.perf_counter()
    encoded = encoder.encode(captions, None, guidance=[1.0] * n, micro_batch=micro_batch)
    images = generator.generate(
        encoded, seeds=seeds, width=64, height=64, steps=steps, guidance=1.0, micro_batch=micro_batch
    )
    seconds = time.perf_counter() - start
    data = {
        "captions": np.asarray(captions), "seeds": np.asarray(seeds, dtype=np.int64), "images": images,
        "steps": np.asarray(steps), "seed": np.asarray(seed), "seconds": np.asarray(seconds),
    }
    if embeds:
        data["prompt_embeds"] = encoded["prompt_embeds"].astype(np.float16)
    return data


def save_cache(path: str, data: dict[str, np.ndarray]) -> int:
    """Write ``data`` to ``path`` as an uncompressed ``.npz``; return its size in bytes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        arrays: dict[str, Any] = dict(data)  # numpy's stub types **kwds like its allow_pickle flag
        np.savez(handle, **arrays)
    return os.path.getsize(path)


def load_cache(path: str) -> dict[str, np.ndarray]:
    """Read a cache written by :func:`save_cache` (every array in memory).

    Raises:
        KeyError: the file has no ``captions``, ``seeds`` or ``images`` (not a teacher cache).
    """
    with np.load(path, allow_pickle=False) as archive:
        data = {key: archive[key] for key in archive.files}
    for key in ("captions", "seeds", "images"):
        if key not in data:
            raise KeyError(f"{path!r} has no {key!r}: not a teacher cache of training.distil")
    return data


def _student_data(paths: list[str], tower: Any) -> dict[str, torch.Tensor]:
    """The caches at ``paths`` joined, with the teacher encoder's states and the true renders.

    Returns:
        ``teacher``, ``real``: uint8 ``[N, 3, 64, 64]`` (the teacher's images, the world's
        renders); ``sequence`` ``[N, 77, D]`` and ``pooled`` ``[N, D]`` float32 (the text tower
        in ``"sequence"`` mode, as the encode stage runs it); ``wrong_pooled`` ``[N, D]``: the
        pooled state of the caption with one attribute changed.
    """
    from training.gan_parts import perturbed_scene

    caches = [load_cache(path) for path in paths]
    captions = [str(c) for cache in caches for c in cache["captions"]]
    teacher = np.concatenate([cache["images"] for cache in caches])
    rng = np.random.default_rng(0)
    scenes = [world.parse_caption(text) for text in captions]
    if any(scene is None for scene in scenes):
        raise ValueError("a cached caption is not a world caption")
    real = np.stack([world.render(scene) for scene in scenes if scene is not None])
    negatives = [world.caption(perturbed_scene(scene, rng)) for scene in scenes if scene is not None]

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        parts = [tower.encode(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    encoded = encode(captions)

    def to_chw(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    return {
        "teacher": to_chw(teacher), "real": to_chw(real), "sequence": encoded["prompt_embeds"],
        "pooled": encoded["text_embeds"], "wrong_pooled": encode(negatives)["text_embeds"],
    }


def _regression(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 at full size plus L1 of the 2x and 4x average-pooled images (the layout counts more)."""
    loss = F.l1_loss(student, teacher)
    for factor in (2, 4):
        loss = loss + 0.5 * F.l1_loss(F.avg_pool2d(student, factor), F.avg_pool2d(teacher, factor))
    return loss


@torch.no_grad()
def _monitor(average: Any, data: dict, tower: Any, seed: int) -> dict:
    """Adherence of a copy of the averaged student (statistics re-estimated) on the progress captions."""
    from training.adherence import rate
    from training.gan_parts import MONITOR_SEED, recalibrate_batch_norm

    captions = [text for text, _image, _scene in world.held_out(64, MONITOR_SEED)]
    encoded = tower.encode(captions)
    student = copy.deepcopy(average)
    recalibrate_batch_norm(student, data["pooled"], batches=8, batch=64, seed=seed, sequence=data["sequence"])
    noise = torch.randn(len(captions), student.config.noise_dim, generator=torch.Generator().manual_seed(seed))
    images = student(noise, encoded["text_embeds"], encoded["prompt_embeds"])
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return {key: round(value, 3) for key, value in rate(captions, list(pixels)).items() if value is not None}


# A training loop past ~60 lines on purpose, as train_gan's: its stages read best top to bottom.
def train(args: argparse.Namespace) -> dict:
    """Distil the teacher's cached images into a one-pass student; save its folder at ``args.out``.

    Returns:
        ``{"out", "wall_s", "steps", "monitor", "l1_first", "l1_last"}``: the folder, the wall
        seconds, the steps run, the last progress adherence, and the regression loss of the
        first and the last step.
    """
    from models.gan import Generator, GeneratorConfig
    from models.store import resolve_model_path
    from models.texttower import TextTower
    from training.gan_parts import Discriminator, discriminator_step, ema_update, log_step, text_statistics

    start = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    teacher_path = resolve_model_path(TEACHER, cache_dir=args.cache_dir)
    tower = TextTower(teacher_path, text_encoder_class="CLIPTextModel", text_output="sequence")
    data = _student_data(args.data, tower)
    print(f"data: {len(data['teacher'])} pairs in {time.time() - start:.0f}s", flush=True)
    config = GeneratorConfig(
        text_dim=data["pooled"].shape[1], noise_dim=args.noise_dim, channels=tuple(args.g_channels),
        sequence_dim=data["sequence"].shape[2], attention_at=tuple(args.attention_at), heads=args.heads,
    )
    student = Generator(config)
    if args.init:  # continue from a saved student (its averaged weights; a new discriminator and optimiser)
        from models.gan import load_generator

        student = load_generator(args.init).train().requires_grad_(True)
        config = student.config
    discriminator = Discriminator(text_dim=config.text_dim, channels=tuple(args.d_channels))
    mean, matrix = text_statistics(data["pooled"])
    for whitening in (discriminator.text,) if args.init else (student.text, discriminator.text):
        whitening.mean.copy_(mean)
        whitening.matrix.copy_(matrix)
    average = copy.deepcopy(student).requires_grad_(False)
    optimiser_g = torch.optim.Adam(student.parameters(), lr=args.lr_g, betas=(0.0, 0.9))
    optimiser_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr_d, betas=(0.0, 0.9))
    rates: dict = {}
    first_l1 = 0.0
    for step in range(args.steps):
        rows = torch.from_numpy(rng.integers(len(data["teacher"]), size=args.batch))
        target = data["teacher"][rows].float() / 127.5 - 1
        pooled, sequence = data["pooled"][rows], data["sequence"][rows]
        fake = student(torch.randn(args.batch, config.noise_dim), pooled, sequence)
        loss_g = _regression(fake, target)
        values = {"l1": loss_g.item()}
        first_l1 = values["l1"] if step == 0 else first_l1
        if step >= args.warmup:
            # 1. Discriminator: (render, own caption) real; (student, own caption) and (render, wrong caption) fake
            real = data["real"][rows].float() / 127.5 - 1
            hard = torch.from_numpy(rng.random(args.batch) < 0.5)[:, None]
            wrong = torch.where(hard, data["wrong_pooled"][rows], pooled.roll(1, dims=0))
            losses = discriminator_step(discriminator, optimiser_d, real, fake, pooled, wrong)
            # 2. Student: the adversarial term joins the regression
            adversarial = -discriminator(fake, pooled).mean()
            loss_g = loss_g + args.adv * adversarial
            values.update(d_real=losses["real"].item(), d_fake=losses["fake"].item(), g_adv=adversarial.item())
        optimiser_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimiser_g.step()
        ema_update(average, student, args.ema if step >= args.warmup // 2 else 0.0)
        if step % 50 == 0 or step == args.steps - 1:
            log_step(step, args.steps, start, **values)
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step == args.steps - 1):
            rates = _monitor(average, data, tower, args.seed)
            print(f"step {step + 1} monitor {rates}", flush=True)
            if args.checkpoints:  # a folder per monitor point: a run cut short still leaves a student
                _save(copy.deepcopy(average), data, tower, f"{args.out}.step{step + 1}", args.seed)
        if args.max_minutes and time.time() - start > args.max_minutes * 60:
            print(f"stopping at step {step + 1}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    _save(average, data, tower, args.out, args.seed)
    result = {
        "out": args.out, "wall_s": round(time.time() - start, 1), "steps": step + 1, "monitor": rates,
        "l1_first": first_l1, "l1_last": values["l1"],
    }
    print(json.dumps(result), flush=True)
    return result


def _save(student: Any, data: dict, tower: Any, out: str, seed: int) -> None:
    """Re-estimate the batch-norm statistics and write the student's folder (with the frozen text tower)."""
    from training.gan_parts import recalibrate_batch_norm, save_gan_folder

    recalibrate_batch_norm(student, data["pooled"], batches=32, batch=64, seed=seed, sequence=data["sequence"])
    save_gan_folder(out, generator=student, tokenizer=tower.tokenizer, text_encoder=tower.text_encoder)


def main(argv: list[str] | None = None) -> dict:
    """Run the command line; return (and print as JSON) what ``data`` made and how fast, or what ``train`` saved."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter
    data = commands.add_parser("data", help="draw the teacher images into an .npz cache", formatter_class=formatter)
    data.add_argument("--out", required=True, help="the .npz to write")
    data.add_argument("--n", type=int, default=20_000, help="pairs (use e.g. 64 to try it)")
    data.add_argument("--seed", type=int, default=0, help="caption seed (training-split scenes of world.pairs)")
    data.add_argument("--steps", type=int, default=1, help="teacher steps (1: colour+position 0.965, model card)")
    data.add_argument("--micro-batch", type=int, default=16)
    data.add_argument("--threads", type=int, default=1)
    data.add_argument("--no-embeds", action="store_true", help="leave out the teacher's hidden states")
    tr = commands.add_parser(
        "train", help="distil cached teacher images into a one-pass student folder", formatter_class=formatter
    )
    tr.add_argument("--data", nargs="+", required=True, help="caches written by `data`")
    tr.add_argument("--out", required=True, help="the student folder to write (the gan backend loads it)")
    tr.add_argument("--seed", type=int, default=0, help="torch and sampling seed")
    tr.add_argument("--steps", type=int, default=4000, help="the shipped shapes-turbo ran 4000")
    tr.add_argument("--batch", type=int, default=64, help="pairs per step")
    tr.add_argument("--warmup", type=int, default=1000, help="regression-only steps before the adversarial term")
    tr.add_argument("--adv", type=float, default=0.1, help="weight of the adversarial term")
    tr.add_argument("--lr-g", type=float, default=2e-4, help="student learning rate (Adam)")
    tr.add_argument("--lr-d", type=float, default=2e-4, help="discriminator learning rate (Adam)")
    tr.add_argument("--ema", type=float, default=0.999, help="decay of the weight average that is saved")
    tr.add_argument("--noise-dim", type=int, default=32, help="width of the per-row noise")
    tr.add_argument("--g-channels", type=int, nargs="+", default=[256, 128, 64, 32, 16], help="student channels")
    tr.add_argument("--attention-at", type=int, nargs="+", default=[4, 8, 16], help="sides with cross-attention")
    tr.add_argument("--heads", type=int, default=2, help="attention heads")
    tr.add_argument("--d-channels", type=int, nargs="+", default=[16, 32, 64, 128], help="discriminator channels")
    tr.add_argument("--eval-every", type=int, default=1000, help="progress adherence every N steps (0: off)")
    tr.add_argument("--checkpoints", action="store_true", help="also save OUT.stepN at every progress point")
    tr.add_argument("--max-minutes", type=float, default=0, help="stop (and save) after this wall time (0: off)")
    tr.add_argument("--cache-dir", default="/tmp", help="model cache where the teacher (builtin:shapes-sd) resolves")
    tr.add_argument("--init", help="a student folder to continue from (its generator's weights and layout)")
    tr.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "train":
        return train(args)
    made = teacher_data(
        args.n, seed=args.seed, steps=args.steps, micro_batch=args.micro_batch, embeds=not args.no_embeds
    )
    size = save_cache(args.out, made)
    seconds = float(made["seconds"])
    result = {
        "out": args.out, "n": args.n, "steps": args.steps, "threads": args.threads, "seconds": round(seconds, 2),
        "images_per_s": round(args.n / seconds, 1), "bytes": size, "bytes_per_pair": size // args.n,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
