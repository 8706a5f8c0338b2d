"""Memory and time as the input grows: 1k, 10k and 50k rows from moto S3, each run in a fresh process.

Usage: python -m bench.scaling [--sizes 1000 10000 50000] [--side 16] [--steps 1]

Each size runs in its own Python process (a fresh driver and a fresh local Ray, so one
run's memory cannot hide in another's), reading a Parquet prompt table from moto S3 and
writing shards back there, with the built-in shapes model at a small image size so 50k rows
fit in minutes on 2 cores (the pipeline's per-row work is the same at any size).  Peak
resident memory is sampled every 0.2 s for the driver, for all Ray workers together and
for each kind of worker (what ``ray::`` names in its command line: an actor's class or a
task's operator).  Time per 1,000 rows is given for the whole run and, between
consecutive sizes, for the extra rows (the difference of two runs' walls over the
difference of their rows: start-up, model loading and the final shard are fixed costs
that cancel, and a 1k-row run cannot amortise them).

Each run's own steady state is also measured between the commits of its first and last
tenth of shards (runs of 5 shards or more: 10k and 50k).

Targets: peak memory at the largest size <= 1.2 x at the smallest (driver and workers);
time per row flat within 15%: per extra row (middle -> largest size against smallest ->
middle), and in steady state between shard commits (largest against middle size).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import BUCKET, MemoryProbe, init_ray, job_spec, moto_s3, report, world_prompts, write_prompt_table


def steady_s_per_1k_rows(output_uri: str) -> float | None:
    """Seconds per 1,000 rows between the commits of the run's first and last tenth of shards.

    A run's own steady state, free of start-up and of the last shard's tail; ``None`` for
    runs of fewer than 5 shards.
    """
    from bench.common import epoch_seconds
    from pipelines.layout import OutputLayout

    stats = OutputLayout(output_uri).all_stats()
    if len(stats) < 5:
        return None
    stats.sort(key=lambda item: item["end_time"])
    first, last = len(stats) // 10, len(stats) - 1 - len(stats) // 10
    seconds = epoch_seconds(stats[last]["end_time"]) - epoch_seconds(stats[first]["end_time"])
    rows = sum(item["count"] for item in stats[first + 1 : last + 1])
    return round(1000 * seconds / rows, 2)


def one_size(rows: int, side: int, steps: int) -> dict:
    """Run ``rows`` rows end to end in this process and return time and memory."""
    from pipelines.runner import run_job

    with moto_s3():
        init_ray()
        source = write_prompt_table(f"s3://{BUCKET}/scaling/prompts.parquet", world_prompts(rows, seed=rows))
        output = f"s3://{BUCKET}/scaling/out"
        spec = job_spec(
            source, output, f"defaults.width={side}", f"defaults.height={side}", f"defaults.steps={steps}",
            "stages.generate.batch_size=64", "stages.generate.micro_batch_size=64", "stages.encode.micro_batch_size=16",
            "output.samples_per_shard=1000",
            score=None,
        )
        with MemoryProbe() as memory:
            start = time.perf_counter()
            summary = run_job(spec, mode="overwrite")
            wall = time.perf_counter() - start
        steady = steady_s_per_1k_rows(output)
    return {
        "steady_s_per_1k_rows": steady, "rows": rows, "images": summary.images, "balanced": summary.balanced,
        "wall_s": round(wall, 1), "s_per_1k_rows": round(1000 * wall / rows, 2), **memory.as_mib(),
        "cpu_s_by_kind": memory.cpu_by_kind(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--side", type=int, default=16, help="image side (multiple of 8; the UNet needs >= 16)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one_size(args.one, args.side, args.steps)), flush=True)
        return {}
    results = []
    for rows in args.sizes:
        out = subprocess.run(
            [sys.executable, "-m", "bench.scaling", "--one", str(rows),
             "--side", str(args.side), "--steps", str(args.steps)],
            capture_output=True, text=True, check=True,
        ).stdout
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
        print(f"{rows} rows: {results[-1]}", flush=True)
    first, last = results[0], results[-1]
    ratios = {}
    for key in ("driver_peak_mib", "workers_pss_peak_mib", "largest_worker_peak_mib"):
        value = last[key] / first[key]
        ratios[f"{key} {last['rows']} / {first['rows']}"] = {"value": value, "target": "<= 1.2", "met": value <= 1.2}
    marginal = [  # seconds per 1,000 extra rows between consecutive sizes
        1000 * (b["wall_s"] - a["wall_s"]) / (b["rows"] - a["rows"]) for a, b in zip(results, results[1:])
    ]
    for a, b, seconds in zip(results, results[1:], marginal):
        b["extra_s_per_1k_rows"] = round(seconds, 2)
        print(f"{a['rows']} -> {b['rows']} rows: {seconds:.2f} s per 1k extra rows")
    if len(marginal) >= 2:
        value = marginal[-1] / marginal[0]
        label = f"time per extra row {results[-2]['rows']}->{last['rows']} / {first['rows']}->{results[1]['rows']}"
        ratios[label] = {"value": value, "target": "within 15% (0.85-1.15)", "met": 0.85 <= value <= 1.15}
    steady = [r for r in results if r["steady_s_per_1k_rows"]]
    if len(steady) >= 2:
        value = steady[-1]["steady_s_per_1k_rows"] / steady[0]["steady_s_per_1k_rows"]
        label = f"steady time per row (between shard commits) {steady[-1]['rows']} / {steady[0]['rows']}"
        ratios[label] = {"value": value, "target": "within 15% (0.85-1.15)", "met": 0.85 <= value <= 1.15}
    value = last["s_per_1k_rows"] / first["s_per_1k_rows"]
    ratios[f"whole-run time per row {last['rows']} / {first['rows']}"] = {  # start-up amortised: not flat
        "value": value, "target": "informational", "met": True,
    }
    by_kind = {str(r["rows"]): r.pop("worker_peak_mib_by_kind") for r in results}
    cpu = {str(r["rows"]): r.pop("cpu_s_by_kind") for r in results}
    return report("scaling", results, ratios, extra={"side": args.side, "steps": args.steps,
                                                     "worker_peak_mib_by_kind": by_kind,
                                                     "cpu_s_by_kind": cpu})


if __name__ == "__main__":
    main()
