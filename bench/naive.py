"""pixelmill against the script a user would write first, on the same prompts, model and machine.

Usage: python -m bench.naive [--rows 384]

- **naive**: load the diffusers pipeline, then for each prompt call it, save a PNG with PIL
  and upload it to S3 (moto) as its own object; torch uses every core (its default).
- **pixelmill**: ``run_job`` on the same prompts (read from moto S3, shards written to moto
  S3), default pools and placement, no score stage (the naive script does not score either),
  over a quarter of the rows and over all of them, after a 32-row warm-up run.

Both are counted from their start-up (naive: loading the pipeline; pixelmill: ``run_job``,
its actor pools and model loads; Python imports and Ray's own start are outside both) to
the last upload: **whole run**.  In **steady state**, the naive loop's own rate against
pixelmill's extra rows of the full run over its extra seconds.  Target: pixelmill / naive
>= 2.  The gap comes from batching (one UNet/VAE call per micro-batch instead of per
prompt), from overlapping stages (encode, denoise, PNG encoding and uploads run at the same
time on different workers) and from one upload per shard instead of per image; pixelmill's
start-up (actors, models, the first shard) is a fixed cost that a short run cannot hide.
On a GPU node batching matters more (a 1-image batch leaves an H200 mostly idle) and the
per-image upload latency is the same, so the ratio should grow there.
"""

from __future__ import annotations

import argparse
import io
import time

import torch

from bench.common import BUCKET, init_ray, job_spec, moto_s3, report, run_pipeline, s3, world_prompts


def naive_script(model_path: str, rows: list[dict], seeds: list[int]) -> tuple[float, float]:
    """The per-prompt script: wall seconds with its pipeline load, and of its loop alone."""
    from diffusers import DiffusionPipeline

    start = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(model_path)
    pipe.set_progress_bar_config(disable=True)
    fs = s3()
    loop_start = time.perf_counter()
    for row, seed in zip(rows, seeds):
        image = pipe(
            row["prompt"], height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        fs.pipe(f"{BUCKET}/naive/{row['id']}.png", buffer.getvalue())
    end = time.perf_counter()
    return end - start, end - loop_start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=384)
    args = parser.parse_args(argv)
    from models.store import resolve_model_path
    from pipelines.rows import derive_seed

    small = max(16, args.rows // 4)
    with moto_s3():
        init_ray()
        rows = world_prompts(args.rows, seed=21)
        spec = job_spec(f"s3://{BUCKET}/unused", f"s3://{BUCKET}/unused", "stages.generate.batch_size=16", score=None)
        run_pipeline(spec, rows[:32], "naive-pixelmill/warm-up")
        small_wall, _ = run_pipeline(spec, rows[:small], "naive-pixelmill/small")
        pixelmill_wall, summary = run_pipeline(spec, rows, "naive-pixelmill/full")
        path = resolve_model_path(spec.model.uri, cache_dir=spec.model.local_cache_dir())
        naive_wall, naive_loop = naive_script(path, rows, [derive_seed(spec.seed, row["id"]) for row in rows])
        uploaded = len(s3().ls(f"{BUCKET}/naive"))
    pixelmill_rate, naive_rate = summary.images / pixelmill_wall, uploaded / naive_wall
    steady, naive_steady = (args.rows - small) / (pixelmill_wall - small_wall), uploaded / naive_loop
    table = [
        {"variant": "naive per-prompt script (load + loop)", "images": uploaded, "wall_s": naive_wall,
         "images_per_s": naive_rate, "steady_images_per_s": naive_steady, "s3_objects": uploaded},
        {"variant": "pixelmill run_job", "images": summary.images, "wall_s": pixelmill_wall,
         "images_per_s": pixelmill_rate, "steady_images_per_s": steady, "s3_objects": "tar+parquet+stats per shard"},
    ]
    ratios = {
        "pixelmill / naive, whole run": {"value": pixelmill_rate / naive_rate, "target": ">= 2",
                                         "met": pixelmill_rate / naive_rate >= 2},
        "pixelmill / naive, steady state": {"value": steady / naive_steady, "target": ">= 2",
                                            "met": steady / naive_steady >= 2},
    }
    return report("naive", table, ratios, extra={"rows": args.rows, "small_rows": small,
                                                 "torch_threads_naive": torch.get_num_threads()})


if __name__ == "__main__":
    main()
