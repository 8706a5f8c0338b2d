"""Generate backends side by side: the built-in diffusion model against the built-in one-pass models, same prompts.

Usage: ``python -m bench.backends [--n 200] [--micro-batch 16]``

Runs held-out world captions (``world.held_out(n, seed=1)``) through ``builtin:shapes-sd``
(the ``diffusers`` backend at 1, 2 (its default) and 4 steps), ``builtin:shapes-turbo`` (its
one-pass student, distilled by ``training.distil``) and ``builtin:shapes-gan`` (a GAN trained
from scratch), both through the ``gan`` backend, in this process, through the classes the
pipeline stages use (``PromptEncoder`` + the backend's generator; no Ray), with one torch
thread. Prints images/s (encode + generate, models loaded and warmed up beforehand) and
adherence (``training.adherence.rate``) per row, checks the student against issue 21's
targets (>= 4x the images/s of shapes-sd at 2 steps; colour + position >= 0.90, background
>= 0.98, shape >= 0.6) and writes ``bench/results/backends.json``. About a minute on the
2-core CI machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from bench.common import report

# (backend, model, steps); the first is the teacher at its default steps, the reference of the ratios
BACKENDS = (
    ("diffusers", "builtin:shapes-sd", 2),
    ("diffusers", "builtin:shapes-sd", 1),
    ("diffusers", "builtin:shapes-sd", 4),
    ("gan", "builtin:shapes-turbo", 1),
    ("gan", "builtin:shapes-gan", 1),
)
# The one-pass student's adherence targets (issue 21), on the 200 held-out captions
STUDENT_TARGETS = {"background": 0.98, "colour_position": 0.90, "shape": 0.6}


def _run(backend: str, uri: str, steps: int, captions: list[str], micro_batch: int, cache_dir: str) -> dict:
    """Load ``uri`` with ``backend``, warm up, then time encode + generate of ``captions`` and rate them."""
    from models.backends import load_backend
    from models.diffusion import PromptEncoder
    from models.store import resolve_model_path
    from training.adherence import rate

    path = resolve_model_path(uri, cache_dir=cache_dir)
    encoder = PromptEncoder(path)
    generator = load_backend(backend, path)

    def draw(prompts: list[str]) -> np.ndarray:
        embeds = encoder.encode(prompts, None, guidance=[1.0] * len(prompts), micro_batch=micro_batch)
        return generator.generate(
            embeds, seeds=list(range(len(prompts))), width=64, height=64, steps=steps, guidance=1.0,
            micro_batch=micro_batch,
        )

    draw(captions[:micro_batch])  # warm-up: first-call allocations
    start = time.perf_counter()
    images = draw(captions)
    seconds = time.perf_counter() - start
    adherence = rate(captions, list(images))
    return {
        "backend": backend, "model": uri, "steps": steps, "images": len(captions), "seconds": round(seconds, 2),
        "images_per_s": len(captions) / seconds, **{f"adh_{k}": v for k, v in adherence.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    from training import world

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="held-out captions (the model cards' 200)")
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the project's CPU setting: a shared 2-core machine
    captions = [text for text, _image, _scene in world.held_out(args.n, 1)]
    with tempfile.TemporaryDirectory() as cache_dir:  # both built-ins are shipped: resolved in place
        rows = [_run(name, uri, steps, captions, args.micro_batch, cache_dir) for name, uri, steps in BACKENDS]
    by_model = {(row["model"], row["steps"]): row for row in rows}
    sd, turbo, gan = (by_model[key] for key in (
        ("builtin:shapes-sd", 2), ("builtin:shapes-turbo", 1), ("builtin:shapes-gan", 1)))
    ratios = {
        "speed (shapes-turbo / shapes-sd 2 steps, images/s)": _at_least(turbo["images_per_s"] / sd["images_per_s"], 4),
        "speed (shapes-gan / shapes-sd 2 steps, images/s)": _at_least(gan["images_per_s"] / sd["images_per_s"], 2),
        **{f"shapes-turbo {key}": _at_least(turbo[f"adh_{key}"], floor) for key, floor in STUDENT_TARGETS.items()},
    }
    return report("backends", rows, ratios, extra={"threads": 1, "micro_batch": args.micro_batch, "n": args.n})


def _at_least(value: float, target: float) -> dict:
    return {"value": value, "target": f">= {target}", "met": value >= target}


if __name__ == "__main__":
    main()
