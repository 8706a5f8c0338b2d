"""A pool's timing (``actors.metered``) and its sums (``pipelines.utilization``): real stages driven directly, no Ray.

A stage that advances a hand-held clock makes every figure exact.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from actors.base import Stage
from actors.fused import FusedStage
from actors.metered import MeteredPool, metered, pool_name
from pipelines import schema
from pipelines.images import encode_images
from pipelines.schema import StageColumns
from pipelines.utilization import columns, merge, shard_figures, without_columns


class Clock:
    """Seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Slow(Stage):
    """Takes ``seconds_per_row`` of the clock per row it computes."""

    contract = StageColumns("slow", adds=("done",))

    def __init__(self, clock: Clock, seconds_per_row: float, load_s: float = 0.0) -> None:
        self.clock, self.seconds_per_row = clock, seconds_per_row
        clock.now += load_s  # the model load

    def compute(self, batch, rows):
        self.clock.now += self.seconds_per_row * len(rows)
        return [True] * len(rows)

    def finish(self, batch, results):
        batch["done"] = np.array([results.get(i, False) for i in range(len(batch["status"]))])


def _batch(size: int) -> dict[str, np.ndarray]:
    return {"prompt": np.array([f"p{i}" for i in range(size)], dtype=object),
            "status": np.array(["ok"] * size, dtype=object), "stage": np.array([""] * size, dtype=object),
            "error": np.array([""] * size, dtype=object)}


def _metered(clock: Clock) -> MeteredPool:
    return MeteredPool(pool=Slow, pool_kwargs={"clock": clock, "seconds_per_row": 0.5}, clock=clock)


def test_busy_wait_and_first_batch_wait_per_call() -> None:
    clock = Clock()
    pool = MeteredPool(pool=Slow, pool_kwargs={"clock": clock, "seconds_per_row": 0.5, "load_s": 5.0}, clock=clock)
    names = columns("slow")
    clock.now += 7.0  # start-up: loaded, no input yet
    first = pool(_batch(4))  # busy 2 s
    clock.now += 3.0  # waits for the next batch
    second = pool(_batch(2))  # busy 1 s
    assert list(first["done"]) == [True] * 4  # the stage still ran
    assert first[names.busy_s].sum() == 2.0 and second[names.busy_s].sum() == 1.0
    assert first[names.first_batch_wait_s].sum() == 7.0 and second[names.first_batch_wait_s].sum() == 0.0
    assert first[names.wait_s].sum() == 0.0 and second[names.wait_s].sum() == 3.0
    assert first[names.init_s].sum() == 5.0 and second[names.init_s].sum() == 0.0  # the load, once
    assert set(first[names.actor]) == set(second[names.actor]) == {pool.actor}


def test_shard_sums_and_run_record() -> None:
    """Rows of two actors spread over two shards add up to each actor's seconds; the columns are dropped."""
    clock = Clock()
    one, two = _metered(clock), _metered(clock)
    clock.now += 1.0
    batches = [one(_batch(4)), two(_batch(4))]  # one: first wait 1 s, busy 2; two: first wait 3, busy 2
    clock.now += 2.0
    batches.append(one(_batch(2)))  # one waited 4 s (two's call and the pause), busy 1
    table = pa.concat_tables([pa.table({k: list(v) for k, v in b.items()}) for b in batches])
    shards = [shard_figures(table.slice(0, 5)), shard_figures(table.slice(5))]
    record: dict = {}
    for figures in shards:
        merge(record, figures)
    slow = record["slow"]
    assert slow["actors"] == 2 and slow["rows"] == 10
    assert slow["per_actor"][one.actor] == {
        "rows": 6, "busy_s": 3.0, "wait_s": 4.0, "first_batch_wait_s": 1.0, "init_s": 0.0,
        "busy_fraction": round(3 / 7, 4), "busy_fraction_with_start": round(3 / 8, 4)}
    assert slow["per_actor"][two.actor]["busy_fraction"] == 1.0  # one batch: no wait between batches
    assert (slow["busy_s"], slow["wait_s"], slow["first_batch_wait_s"]) == (5.0, 4.0, 4.0)
    assert slow["busy_fraction"] == round(5 / 9, 4)
    assert not any(name.startswith(schema.UTILIZATION_PREFIX) for name in without_columns(table).column_names)
    assert "prompt" in without_columns(table).column_names


def test_fused_pool_is_timed_once_under_its_stages_names() -> None:
    clock = Clock()
    steps = [(Slow, {"clock": clock, "seconds_per_row": 1.0}), (encode_images, {"image_format": "png", "quality": 90})]
    fused = FusedStage(steps=steps)
    assert pool_name(fused) == "slow"  # image encoding riding along does not rename the pool
    pool = MeteredPool(pool=FusedStage, pool_kwargs={"steps": steps[:1]}, clock=clock)
    out = pool(_batch(3))
    assert pool.name == "slow" and out[columns("slow").busy_s].sum() == 3.0
    assert [name for name in out if name.startswith(schema.UTILIZATION_PREFIX)] == list(columns("slow"))
    assert shard_figures(pa.table({"prompt": ["a"]})) == {}  # a block that met no pool


def test_metered_class_keeps_the_pool_class_name() -> None:
    """Ray names the operator and its worker processes after the class: ``MapBatches(FusedStage)`` stays."""
    from ray import cloudpickle  # what Ray sends the class with

    named = metered(FusedStage)
    assert named.__name__ == "FusedStage" and issubclass(named, MeteredPool) and metered(FusedStage) is named
    clock = Clock()
    pool = cloudpickle.loads(cloudpickle.dumps(named))(
        pool=FusedStage, pool_kwargs={"steps": [(Slow, {"clock": clock, "seconds_per_row": 1.0})]}, clock=clock)
    assert pool(_batch(2))[columns("slow").busy_s].sum() == 2.0
