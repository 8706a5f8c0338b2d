"""Generate backends side by side: the built-in diffusion model vs the built-in GAN, same prompts.

Usage: ``python -m bench.backends [--n 200] [--micro-batch 16]``

Runs held-out world captions (``world.held_out(n, seed=1)``) through ``builtin:shapes-sd``
(the ``diffusers`` backend, its default 2 steps) and ``builtin:shapes-gan`` (the ``gan``
backend, one pass) in this process, through the classes the pipeline stages use
(``PromptEncoder`` + the backend's generator; no Ray), with one torch thread. Prints
images/s (encode + generate, models loaded and warmed up beforehand) and adherence
(``training.adherence.rate``) per backend and writes ``bench/results/backends.json``.
About 20 seconds on the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from bench.common import report

BACKENDS = (("diffusers", "builtin:shapes-sd", 2), ("gan", "builtin:shapes-gan", 1))


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
    sd, gan = rows
    speedup = gan["images_per_s"] / sd["images_per_s"]
    # One generator pass against two UNet steps + a VAE decode; adherence is in the table, not a target:
    # which backend draws better depends on how far each built-in model was trained (see their model cards)
    ratios = {"speed (gan / diffusers images/s)": {"value": speedup, "target": ">= 2", "met": speedup >= 2}}
    return report("backends", rows, ratios, extra={"threads": 1, "micro_batch": args.micro_batch, "n": args.n})


if __name__ == "__main__":
    main()
