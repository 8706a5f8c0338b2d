"""Where generate's micro-batch is recorded: each shard's stats count rows per shape and size, and
``_run.json`` (``RunSummary``) sums them over the run (no Ray)."""

from __future__ import annotations

import pyarrow as pa

from pipelines.accounting import RunSummary
from pipelines.sink import ShardDatasink


def _shard(shard: int, sizes: list[int], widths: list[int]) -> dict:
    n = len(sizes)
    table = pa.table({
        "status": ["ok"] * n, "stage": [""] * n, "error": [""] * n,
        "width": widths, "height": [64] * n, "steps": [1] * n, "guidance": [0.0] * n, "micro_batch": sizes,
    })
    return ShardDatasink._stats(table, shard=shard, run_id="r", started="", seconds=0.0)


def test_stats_and_run_record_the_micro_batch_of_each_shape() -> None:
    first = _shard(0, [8, 8, 4, 0], [64, 64, 32, 64])  # 0: the row drew no image
    second = _shard(1, [4, 4, 4], [64, 64, 64])  # a back-off: this actor went down to 4 for 64x64
    assert first["micro_batch"] == {"64x64/1 steps/guidance 0.0": {"8": 2}, "32x64/1 steps/guidance 0.0": {"4": 1}}
    summary = RunSummary(run_id="r", output="out", mode="resume")
    summary.add_shards([second, first])
    assert summary.micro_batch_rows == {"64x64/1 steps/guidance 0.0": {"8": 2, "4": 3},
                                        "32x64/1 steps/guidance 0.0": {"4": 1}}
    assert summary.micro_batch == {"64x64/1 steps/guidance 0.0": 4, "32x64/1 steps/guidance 0.0": 4}
    # shards written before the column existed record nothing
    old = _shard(2, [1], [64])
    del old["micro_batch"]
    summary.add_shards([old])
    assert summary.micro_batch["64x64/1 steps/guidance 0.0"] == 4
