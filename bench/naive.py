"""pixelmill against the script a user would write first, on the same prompts, model and machine.

Usage: python -m bench.naive [--rows 128]

- **naive**: load the diffusers pipeline once, then for each prompt call it, save a PNG with
  PIL and upload it to S3 (moto) as its own object; torch uses every core (its default).
- **pixelmill**: ``run_job`` on the same prompts (read from moto S3, shards written to moto S3),
  default pools, no score stage (the naive script does not score either).

Target: pixelmill / naive >= 2.  Both load the model once; pixelmill's start-up (Ray, actor
pools) is inside its time.  The gap comes from batching (one UNet/VAE call per micro-batch
instead of per prompt), from overlapping stages (encode, denoise, PNG encoding and uploads
run at the same time on different workers) and from one upload per shard instead of per
image.  On a GPU node batching matters more (a 1-image batch leaves an H200 mostly idle)
and the per-image upload latency is the same, so the ratio should grow there.
"""

from __future__ import annotations

import argparse
import io
import time

import torch

from bench.common import BUCKET, init_ray, job_spec, moto_s3, report, s3, world_prompts, write_prompt_table


def naive_script(model_path: str, rows: list[dict], seeds: list[int]) -> float:
    """The per-prompt loop; returns its wall time in seconds (model load excluded, as for pixelmill's bare work)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model_path)
    pipe.set_progress_bar_config(disable=True)
    fs = s3()
    start = time.perf_counter()
    for row, seed in zip(rows, seeds):
        image = pipe(
            row["prompt"], height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        fs.pipe(f"{BUCKET}/naive/{row['id']}.png", buffer.getvalue())
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=128)
    args = parser.parse_args(argv)
    from models.store import resolve_model_path
    from pipelines.rows import derive_seed
    from pipelines.runner import run_job

    with moto_s3():
        init_ray()
        rows = world_prompts(args.rows, seed=21)
        source = write_prompt_table(f"s3://{BUCKET}/naive-in/prompts.parquet", rows)
        spec = job_spec(source, f"s3://{BUCKET}/pixelmill-out", "stages.generate.batch_size=16", score=None)
        start = time.perf_counter()
        summary = run_job(spec, mode="overwrite")
        pixelmill_wall = time.perf_counter() - start
        path = resolve_model_path(spec.model.uri, cache_dir=spec.model.local_cache_dir())
        naive_wall = naive_script(path, rows, [derive_seed(spec.seed, row["id"]) for row in rows])
        uploaded = len(s3().ls(f"{BUCKET}/naive"))
    pixelmill_rate, naive_rate = summary.images / pixelmill_wall, uploaded / naive_wall
    table = [
        {"variant": "naive per-prompt script", "images": uploaded, "wall_s": naive_wall, "images_per_s": naive_rate,
         "s3_objects": uploaded},
        {"variant": "pixelmill run_job", "images": summary.images, "wall_s": pixelmill_wall,
         "images_per_s": pixelmill_rate, "s3_objects": "tar+parquet+stats per shard"},
    ]
    value = pixelmill_rate / naive_rate
    return report("naive", table, {"pixelmill / naive": {"value": value, "target": ">= 2", "met": value >= 2}},
                  extra={"rows": args.rows, "torch_threads_naive": torch.get_num_threads()})


if __name__ == "__main__":
    main()
