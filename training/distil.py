"""Teacher data for distilling ``shapes-sd`` into a one-pass student (issue 21; design in ``training/DISTIL.md``).

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

The numbers are deterministic for a seed on a given machine, thread count and library build.
Training (the regression + adversarial recipe of ``DISTIL.md``) is not written yet.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch

from training import world

__all__ = ["SEED_STRIDE", "TEACHER", "teacher_data", "save_cache", "load_cache", "main"]

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


def main(argv: list[str] | None = None) -> dict:
    """Run the command line; return (and print as JSON) what ``data`` made and how fast."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="draw the teacher images into an .npz cache")
    data.add_argument("--out", required=True)
    data.add_argument("--n", type=int, default=20_000, help="pairs (use e.g. 64 to try it)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--steps", type=int, default=1, help="teacher steps (1: colour+position 0.965, model card)")
    data.add_argument("--micro-batch", type=int, default=16)
    data.add_argument("--threads", type=int, default=1)
    data.add_argument("--no-embeds", action="store_true", help="leave out the teacher's hidden states")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
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
