"""Sink throughput: committed shards per second to moto S3 against raw s3fs uploads of the same bytes.

Usage: python -m bench.sink [--rows 4000] [--side 128] [--per-shard 1000]

The rows are made in memory (random-noise PNGs, which do not compress, so the bytes are
what a real run at that size uploads) and materialised before timing, so only the sink is
measured: ``ShardDatasink`` through Ray Data's ``write_datasink`` (tar + Parquet + stats per
shard, each a write-once upload) against ``s3fs.S3FileSystem.pipe`` of every committed file's
bytes to another prefix, all in one call (s3fs uploads them concurrently): the fastest plain
s3fs way to put those bytes there.  Target: sink MB/s / raw MB/s >= 0.8.
"""

from __future__ import annotations

import argparse
import io
import time
import uuid

import numpy as np
from PIL import Image

from bench.common import BUCKET, init_ray, moto_s3, report, s3


def _noise_png(rng: np.random.Generator, side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def shard_rows(rows: int, side: int, per_shard: int):
    """A materialised dataset of encoded rows in blocks of ``per_shard`` (what the sink receives)."""
    import ray.data

    rng = np.random.default_rng(0)
    items = [
        {"id": f"row-{i:06d}", "prompt": f"noise {i}", "seed": i, "status": "ok", "stage": "", "error": "",
         "image": _noise_png(rng, side), "image_format": "png"}
        for i in range(rows)
    ]
    ds = ray.data.from_items(items).repartition(target_num_rows_per_block=per_shard, strict=True)
    return ds.materialize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--side", type=int, default=128, help="image side in pixels")
    parser.add_argument("--per-shard", type=int, default=1000, help="rows per shard (the project default)")
    args = parser.parse_args(argv)
    from pipelines.runner import WRITE_TASK_OPTIONS
    from pipelines.sink import ShardDatasink
    from pipelines.spec import OutputSpec

    with moto_s3():
        init_ray()
        ds = shard_rows(args.rows, args.side, args.per_shard)
        output = OutputSpec(uri=f"s3://{BUCKET}/sink", samples_per_shard=args.per_shard, report=False)
        # Warm-up: a first write starts Ray's worker processes and imports the sink's
        # libraries in them; a pipeline's writers are warm after their first shard.
        warm = OutputSpec(uri=f"s3://{BUCKET}/warm-up", samples_per_shard=args.per_shard, report=False)
        start = time.perf_counter()
        ds.write_datasink(ShardDatasink(warm, run_id=uuid.uuid4().hex), ray_remote_args=WRITE_TASK_OPTIONS)
        warm_wall = time.perf_counter() - start
        sink = ShardDatasink(output, run_id=uuid.uuid4().hex)
        start = time.perf_counter()
        ds.write_datasink(sink, ray_remote_args=WRITE_TASK_OPTIONS)
        sink_wall = time.perf_counter() - start
        task_s = sorted(stats["duration_s"] for stats in sink.shard_stats)
        fs = s3()
        committed = {path: fs.cat(path) for path in fs.find(f"{BUCKET}/sink")}
        total = sum(len(data) for data in committed.values())
        start = time.perf_counter()
        fs.pipe({path.replace("/sink/", "/raw/", 1): data for path, data in committed.items()})
        raw_wall = time.perf_counter() - start
    mib = total / 2**20
    table = [
        {"variant": "ShardDatasink (commit protocol)", "files": len(committed), "mib": mib, "wall_s": sink_wall,
         "mib_per_s": mib / sink_wall},
        {"variant": "raw s3fs pipe, same bytes", "files": len(committed), "mib": mib, "wall_s": raw_wall,
         "mib_per_s": mib / raw_wall},
    ]
    value = raw_wall / sink_wall
    return report("sink", table, {"sink / raw MB/s": {"value": value, "target": ">= 0.8", "met": value >= 0.8}},
                  extra={"rows": args.rows, "side": args.side, "per_shard": args.per_shard,
                         "warm_up_wall_s": warm_wall, "write_task_s": task_s})


if __name__ == "__main__":
    main()
