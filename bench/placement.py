"""Stage placement: separate encode and generate pools against one fused actor, and image
encoding in CPU tasks against inside the last model actor; the same run each way.

Usage: python -m bench.placement [--rows 128]

Four runs of the same prompts (moto S3 in and out, built-in shapes model, score stage on),
one after another in one Ray runtime, in an order that alternates the variants twice so a
slow spell of the shared machine does not land on one variant only; each variant's
images/s is the mean of its two runs.  The spec's ``placement`` defaults are set to the
winner (see README, Performance).
"""

from __future__ import annotations

import argparse
import time

from bench.common import BUCKET, init_ray, job_spec, moto_s3, report, world_prompts, write_prompt_table

VARIANTS = {
    "separate pools, image encoding in tasks": {"fuse_encode_generate": False, "encode_images": "task"},
    "encode+generate fused, image encoding in tasks": {"fuse_encode_generate": True, "encode_images": "task"},
    "separate pools, image encoding in last actor": {"fuse_encode_generate": False, "encode_images": "last_stage"},
    "encode+generate fused, image encoding in last actor": {
        "fuse_encode_generate": True, "encode_images": "last_stage",
    },
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    from pipelines.runner import run_job

    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with moto_s3():
        init_ray()
        source = write_prompt_table(f"s3://{BUCKET}/placement/prompts.parquet", world_prompts(args.rows, seed=31))
        order = list(VARIANTS)
        for repeat in range(args.repeats):
            for name in order if repeat % 2 == 0 else reversed(order):
                spec = job_spec(
                    source, f"s3://{BUCKET}/placement/out", "stages.generate.batch_size=16",
                    "output.samples_per_shard=64", placement=VARIANTS[name],
                )
                start = time.perf_counter()
                summary = run_job(spec, mode="overwrite")
                rates[name].append(summary.images / (time.perf_counter() - start))
    means = {name: sum(r) / len(r) for name, r in rates.items()}
    baseline = means[order[0]]
    table = [
        {"variant": name, **VARIANTS[name], "images_per_s": means[name], "runs": ", ".join(f"{x:.1f}" for x in r),
         "vs_separate_tasks": means[name] / baseline}
        for name, r in rates.items()
    ]
    fastest = max(means, key=means.__getitem__)  # the first of equals, as max over the table rows
    ratios = {
        f"{row['variant']} / {order[0]}": {"value": row["vs_separate_tasks"], "target": "informational", "met": True}
        for row in table[1:]
    }
    print(f"fastest: {fastest}")
    return report("placement", table, ratios, extra={"rows": args.rows, "fastest": fastest})


if __name__ == "__main__":
    main()
