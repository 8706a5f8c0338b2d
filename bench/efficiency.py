"""Pipeline efficiency: full pixelmill images/s over a bare loop of its bottleneck stage's model.

Usage: python -m bench.efficiency [--rows 768] [--batch 16]

Side by side in one process, on the same prompts:

- **pixelmill**: ``run_job`` on the built-in shapes model (read Parquet from moto S3 ->
  encode -> generate -> score -> encode PNG -> commit shards to moto S3), one actor per
  stage, over a quarter of the rows and over all of them (after a 32-row warm-up run that
  starts Ray's worker processes).  Images/s is counted over the whole run, start-up
  included, and in steady state: the extra rows of the full run over its extra seconds
  (the start-up, actors starting and models loading, is the same in both runs).
- **bare loop**: the generate stage's model alone (``models.diffusion.ImageGenerator``) on
  the same batches and embeddings, same threads as the stage's actor (Ray gives an actor
  one thread per CPU it holds), no Ray, no I/O.

Target: pixelmill / bare >= 0.9, with the generate pool busy >= 0.95 of its steady-state time
(``_run.json``'s ``utilization``, ``pipelines.utilization``); the generate pool's profile
(:func:`generate_pool_profile`) and the CPU seconds of each kind of process say why a run misses.
On a CPU-only machine every stage shares the same cores as the bottleneck, which a GPU node
does not do; the per-stage seconds per row printed below say where the time went.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import BUCKET, MemoryProbe, init_ray, job_spec, moto_s3, report, run_pipeline, world_prompts


def bare_generate_loop(spec, prompts: list[str], seeds: list[int], threads: int) -> float:
    """Images/s of the generate model alone, batches as the stage gets them; embeddings precomputed."""
    from models.diffusion import ImageGenerator, PromptEncoder
    from models.store import resolve_model_path

    path = resolve_model_path(spec.model.uri, cache_dir=spec.model.local_cache_dir())
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        embeds = PromptEncoder(path).encode(prompts, None, guidance=[1.0] * len(prompts), micro_batch=16)
        generator = ImageGenerator(path)
        stage = spec.stages.generate
        kwargs = {"width": spec.defaults.width, "height": spec.defaults.height, "steps": spec.defaults.steps,
                  "guidance": spec.defaults.guidance, "micro_batch": stage.micro_batch_size}
        first = {name: value[: stage.batch_size] for name, value in embeds.items()}
        generator.generate_checked(first, seeds=seeds[: stage.batch_size], **kwargs)  # warm-up
        start = time.perf_counter()
        for lo in range(0, len(prompts), stage.batch_size):
            batch = {name: value[lo : lo + stage.batch_size] for name, value in embeds.items()}
            generator.generate_checked(batch, seeds=seeds[lo : lo + stage.batch_size], **kwargs)
        return len(prompts) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=768)
    parser.add_argument("--batch", type=int, default=16, help="generate batch size (rows per call)")
    parser.add_argument("--no-score", action="store_true", help="drop the score stage (a profile: one CPU user fewer)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a spec setting for the pipeline runs, as `pixelmill run --set` (repeatable)")
    args = parser.parse_args(argv)
    small = max(args.batch, args.rows // 4)
    with moto_s3():
        init_ray()
        rows = world_prompts(args.rows, seed=11)
        spec = job_spec(
            f"s3://{BUCKET}/unused", f"s3://{BUCKET}/unused", f"stages.generate.batch_size={args.batch}",
            "output.samples_per_shard=64", *args.set, **({"score": None} if args.no_score else {}),
        )
        run_pipeline(spec, rows[:32], "efficiency/warm-up")  # Ray's worker processes and their imports
        small_wall, _ = run_pipeline(spec, rows[:small], "efficiency/small")
        with MemoryProbe() as memory:
            wall, summary = run_pipeline(spec, rows, "efficiency/full")
        # The row seeds the pipeline used: sha256(job seed, id), as pipelines.rows derives them.
        from pipelines.rows import derive_seed

        seeds = [derive_seed(spec.seed, row["id"]) for row in rows]
        threads = max(1, int(spec.stages.generate.num_cpus))
        bare_rate = bare_generate_loop(spec, [row["prompt"] for row in rows], seeds, threads)
        stage_times = summary_stage_times(f"s3://{BUCKET}/efficiency/full/out")
    pipeline_rate = summary.images / wall
    # The start-up (actors starting, models loading, the first shard filling) costs the same
    # in both runs, so the extra rows over the extra seconds is the steady-state rate.
    steady = (args.rows - small) / (wall - small_wall)
    table = [
        {"variant": f"pixelmill run_job, {small} rows", "images": small, "wall_s": small_wall,
         "images_per_s": small / small_wall},
        {"variant": f"pixelmill run_job, {args.rows} rows", "images": summary.images, "wall_s": wall,
         "images_per_s": pipeline_rate},
        {"variant": f"pixelmill steady state (the extra {args.rows - small} rows)", "images": args.rows - small,
         "wall_s": wall - small_wall, "images_per_s": steady},
        {"variant": "bare generate loop", "images": len(rows), "wall_s": len(rows) / bare_rate,
         "images_per_s": bare_rate},
    ]
    ratios = {
        "efficiency (whole run / bare)": {"value": pipeline_rate / bare_rate, "target": ">= 0.9",
                                          "met": pipeline_rate / bare_rate >= 0.9},
        "efficiency (steady state / bare)": {"value": steady / bare_rate, "target": ">= 0.9",
                                             "met": steady / bare_rate >= 0.9},
    }
    profile = generate_pool_profile(summary, wall=wall, bare_rate=bare_rate, stage_times=stage_times)
    if profile:  # the steady state by the generate actors' own clocks: start-up and tail left out, one run
        clocked = profile["rows"] / profile["steady_s"]
        table.append({"variant": "pixelmill steady state (generate actors' clocks)", "images": profile["rows"],
                      "wall_s": profile["steady_s"], "images_per_s": clocked})
        ratios["efficiency (steady state by the actors' clocks / bare)"] = {
            "value": clocked / bare_rate, "target": ">= 0.9", "met": clocked / bare_rate >= 0.9}
    for label, key in (("generate pool busy (steady)", "busy_fraction"),
                       ("generate pool busy (whole run)", "busy_of_wall")):
        value = profile.get(key) or 0.0
        ratios[label] = {"value": value, "target": ">= 0.95", "met": value >= 0.95}
    result = report("efficiency", table, ratios, extra={
        "memory": memory.as_mib(), "cpu_s_by_kind": memory.cpu_by_kind(), "stage_s_per_row": stage_times,
        "generate_pool": profile, "utilization": summary.utilization,
        "threads": threads, "sets": args.set,
        "rows": args.rows, "small_rows": small, "generate_batch": args.batch, "score": not args.no_score,
        "start_up_s": wall - args.rows / steady,
    })
    print("generate pool:", ", ".join(f"{k} {v}" for k, v in profile.items()))
    print("CPU seconds by process:", ", ".join(f"{k} {v}" for k, v in result["cpu_s_by_kind"].items()))
    return result


def generate_pool_profile(summary, *, wall: float, bare_rate: float, stage_times: dict[str, float]) -> dict:
    """Where the generate pool's time went in the full run, to attribute a miss of the target.

    - ``steady_s``: one actor's seconds from its first batch to the end of its last (busy + waits);
    - bubble: ``busy_fraction`` below 1 (the pool waited for input between batches; steady state),
      ``busy_fraction_with_start`` (its wait for the first batch too), and ``busy_of_wall`` (busy
      seconds over actors x the run's wall time: start-up and the tail included);
    - contention: ``generate_s_per_row`` in the pipeline over the bare loop's seconds per row
      (``contention``: 1 when the model runs as fast as alone);
    - overhead: the pool's busy seconds per row beyond its model stages' (``overhead_s_per_row``:
      fused text encoding is ``encode_s_per_row``, image encoding when it rides in this pool).
    """
    found = [(n, p) for n, p in summary.utilization.items() if "generate" in n.split("+")]
    if not found:
        return {}
    name, pool = found[0]
    stages = name.split("+")
    rows = max(pool["rows"], 1)
    generate = stage_times.get("generate_s", float("nan"))
    return {
        "pool": name, "actors": pool["actors"], "rows": pool["rows"], "busy_fraction": pool["busy_fraction"],
        # seconds of one actor between its first batch and its last: busy + waits, over the actors
        "steady_s": round((pool["busy_s"] + pool["wait_s"]) / pool["actors"], 3),
        "busy_fraction_with_start": pool["busy_fraction_with_start"],
        "busy_of_wall": round(pool["busy_s"] / (pool["actors"] * wall), 4),
        "first_batch_wait_s": pool["first_batch_wait_s"], "init_s": pool["init_s"],
        "pool_busy_s_per_row": round(pool["busy_s"] / rows, 5),
        "generate_s_per_row": round(generate, 5), "bare_s_per_row": round(1 / bare_rate, 5),
        "contention": round(generate * bare_rate, 3),
        "encode_s_per_row": round(stage_times.get("encode_s", 0.0), 5) if "encode" in stages else 0.0,
        "overhead_s_per_row": round(pool["busy_s"] / rows - sum(stage_times.get(f"{s}_s", 0.0) for s in stages), 5),
    }


def summary_stage_times(output_uri: str) -> dict[str, float]:
    """Mean seconds per row of each stage (the ``*_s`` columns of the Parquet)."""
    import pyarrow.dataset as pads

    from bench.common import s3

    fs = s3()
    files = fs.glob(output_uri.removeprefix("s3://") + "/*.parquet")
    table = pads.dataset(files, filesystem=fs, format="parquet").to_table()
    return {
        name: float(np.nanmean(table[name].to_numpy(zero_copy_only=False)))
        for name in table.column_names if name.endswith("_s")
    }


if __name__ == "__main__":
    main()
