"""Sink throughput: committed shards per second to moto S3 against raw s3fs uploads of the same bytes.

Usage: python -m bench.sink [--rows 12000] [--side 128] [--per-shard 1000]

The rows are made in memory (random-noise PNGs, which do not compress, so the bytes are
what a real run at that size uploads; 1,000 distinct images reused across shards) and
materialised before timing, so only the sink is
measured: ``ShardDatasink`` through Ray Data's ``write_datasink`` (tar + Parquet + stats per
shard, each a write-once upload) against ``s3fs.S3FileSystem.pipe`` of every committed file's
bytes to another prefix, all in one call (s3fs uploads them concurrently): the fastest plain
s3fs way to put those bytes there.  Target: sink MB/s / raw MB/s >= 0.8.

Every Ray Data execution starts with its resource budget at zero until Ray Data's
autoscaling coordinator answers (up to ~1 s in Ray 2.60), so only one write task runs in
that first second; a pipeline pays it once per job, so the default writes 12 shards, not 4.
``task_start_s`` in the JSON shows it: when each write task started, after the call.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import uuid

import numpy as np
from PIL import Image

from bench.common import BUCKET, cpu_seconds, cpu_used, epoch_seconds, init_ray, moto_s3, report, s3


def _noise_png(rng: np.random.Generator, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def shard_rows(rows: int, side: int, per_shard: int):
    """A materialised dataset of encoded rows in blocks of ``per_shard`` (what the sink receives)."""
    import ray.data

    rng = np.random.default_rng(0)
    images = [_noise_png(rng, side) for _ in range(min(rows, 1000))]
    items = [
        {"id": f"row-{i:06d}", "prompt": f"noise {i}", "seed": i, "status": "ok", "stage": "", "error": "",
         "image": images[i % len(images)], "image_format": "png"}
        for i in range(rows)
    ]
    ds = ray.data.from_items(items).repartition(target_num_rows_per_block=per_shard, strict=True)
    return ds.materialize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=12000)
    parser.add_argument("--side", type=int, default=128, help="image side in pixels")
    parser.add_argument("--per-shard", type=int, default=1000, help="rows per shard (the project default)")
    args = parser.parse_args(argv)
    from pipelines.runner import WRITE_TASK_OPTIONS
    from pipelines.sink import ShardDatasink
    from pipelines.spec import OutputSpec

    with moto_s3():
        init_ray(num_cpus=os.cpu_count())  # the sink alone: as many write tasks as cores
        ds = shard_rows(args.rows, args.side, args.per_shard)
        output = OutputSpec(uri=f"s3://{BUCKET}/sink", samples_per_shard=args.per_shard, report=False)
        # Warm-up: a first write starts Ray's worker processes and imports the sink's
        # libraries in them; a pipeline's writers are warm after their first shard.
        warm = OutputSpec(uri=f"s3://{BUCKET}/warm-up", samples_per_shard=args.per_shard, report=False)
        start = time.perf_counter()
        ds.write_datasink(ShardDatasink(warm, run_id=uuid.uuid4().hex), ray_remote_args=WRITE_TASK_OPTIONS)
        warm_wall = time.perf_counter() - start
        sink = ShardDatasink(output, run_id=uuid.uuid4().hex)
        called, start, cpu_before = time.time(), time.perf_counter(), cpu_seconds()
        ds.write_datasink(sink, ray_remote_args=WRITE_TASK_OPTIONS)
        sink_wall = time.perf_counter() - start
        sink_cpu = cpu_used(cpu_before, cpu_seconds())
        task_s = sorted(stats["duration_s"] for stats in sink.shard_stats)
        task_start_s = sorted(round(epoch_seconds(stats["start_time"]) - called, 2) for stats in sink.shard_stats)
        fs = s3()
        committed = {path: fs.cat(path) for path in fs.find(f"{BUCKET}/sink")}
        total = sum(len(data) for data in committed.values())
        start, cpu_before = time.perf_counter(), cpu_seconds()
        fs.pipe({path.replace("/sink/", "/raw/", 1): data for path, data in committed.items()})
        raw_wall = time.perf_counter() - start
        raw_cpu = cpu_used(cpu_before, cpu_seconds())
    mib = total / 2**20
    table = [
        {"variant": "ShardDatasink (commit protocol)", "files": len(committed), "mib": mib, "wall_s": sink_wall,
         "mib_per_s": mib / sink_wall, **{f"cpu_s_{k}": v for k, v in sink_cpu.items()}},
        {"variant": "raw s3fs pipe, same bytes", "files": len(committed), "mib": mib, "wall_s": raw_wall,
         "mib_per_s": mib / raw_wall, **{f"cpu_s_{k}": v for k, v in raw_cpu.items()}},
    ]
    value = raw_wall / sink_wall
    return report("sink", table, {"sink / raw MB/s": {"value": value, "target": ">= 0.8", "met": value >= 0.8}},
                  extra={"rows": args.rows, "side": args.side, "per_shard": args.per_shard,
                         "warm_up_wall_s": warm_wall, "write_task_s": task_s,
                         "task_start_s": task_start_s})


if __name__ == "__main__":
    main()
