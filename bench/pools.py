"""Full actor pools from the start: a run's start-up timeline on a multi-node Ray cluster.

Usage: python -m bench.pools [--rows 192] [--actors 3] [--batch 8]

One process starts a ``ray.cluster_utils.Cluster``: a head node (2 CPUs: reads, image
encoding, writes) and one worker node per generate actor, each with one (pretend) GPU, so
the N generate actors (``num_gpus: 1``, running on the CPU) land on N nodes as on a GPU
cluster.  The same prompts (a local Parquet) run side by side through ``run_job``:

- **pixelmill**: fixed ``concurrency: N`` as a run does now (the counting passes run while
  the pools start, ``pipelines.runner``);
- **Ray Data fixed pool**: ``ActorPoolStrategy(size=N)`` with the counting passes first, as
  before (``runner.COUNT_WHILE_RUNNING = False``);
- **Ray Data autoscaling**: ``concurrency: [1, N]`` with Ray Data's default start (one actor,
  ``initial_concurrency: 1``), counting first;
- **pixelmill autoscaling**: ``concurrency: [1, N]`` as a run does now (starts N, Ray Data may
  scale idle actors down).

Each variant reports its start-up timeline (seconds from the call of ``run_job``): preflight,
Ray and Ray Data set-up, the duplicate-id and counting passes, each generate actor's model
loaded and its first batch (recorded by the actors themselves into marker files), the
first committed shard (its stats file's ``end_time``) and the end.  "All busy" is when the
last of the N actors started its first batch (none if some never did).

Ratios: time to the first committed shard and time until all N actors are busy, Ray Data's
fixed pool over pixelmill's (> 1: pixelmill is earlier).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from actors.generate import GenerateStage
from bench.common import epoch_seconds, report, world_prompts, write_prompt_table

MARKS_VAR = "PIXELMILL_BENCH_POOL_MARKS"  # a folder every generate actor writes its marker file into


class MarkedGenerate(GenerateStage):
    """The generate stage, recording when its model was loaded and when its first batch started.

    The marker file (``<MARKS_VAR>/<pid>.json``) is written at the first batch; the actors of all
    nodes of a ``cluster_utils.Cluster`` share this machine's disk.
    """

    def __init__(self, **kwargs: Any) -> None:
        import ray

        start = time.time()
        super().__init__(**kwargs)
        self._mark: dict[str, Any] = {"init_start": start, "ready": time.time(),
                                      "node": ray.get_runtime_context().get_node_id()}

    def __call__(self, batch: Any) -> Any:
        if "first_batch" not in self._mark:
            self._mark["first_batch"] = time.time()
            folder = os.environ[MARKS_VAR]
            with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as handle:
                json.dump(self._mark, handle)
        return super().__call__(batch)


@contextlib.contextmanager
def phase_clock() -> Iterator[list[tuple[str, float, float]]]:
    """Yield a list that fills with ``(phase, start, end)`` (epoch seconds) of a ``run_job`` call's steps.

    The steps are wrapped where ``run_job`` looks them up; the wrappers are removed on exit.
    """
    from pipelines import dedupe, resume, runner

    phases: list[tuple[str, float, float]] = []

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                phases.append((name, start, time.time()))
        return wrapper

    targets = [(runner, "start_run", "Ray + Ray Data set-up"), (runner, "prepare_output", "prepare output"),
               (dedupe, "first_occurrences", "duplicate-id pass"), (resume.RunRows, "counts", "counting passes"),
               (runner, "execute", "main execution"), (runner, "finish_run", "records + report")]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    for owner, name, label in targets:
        setattr(owner, name, timed(label, getattr(owner, name)))
    try:
        yield phases
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@contextlib.contextmanager
def marked_generate() -> Iterator[None]:
    """Make the plan build :class:`MarkedGenerate` actors instead of ``GenerateStage`` ones."""
    from pipelines import pools  # owns the pools' steps (placed_stages)

    pools.GenerateStage = MarkedGenerate  # type: ignore[misc]
    try:
        yield
    finally:
        pools.GenerateStage = GenerateStage  # type: ignore[misc]


def one_variant(spec: Any, *, marks: str, count_while_running: bool, actors: int) -> dict[str, Any]:
    """Run ``spec`` once and return its timeline (seconds from the ``run_job`` call) and what it made."""
    from pipelines import runner
    from pipelines.layout import OutputLayout

    for path in glob.glob(os.path.join(marks, "*.json")):
        os.remove(path)
    previous = runner.COUNT_WHILE_RUNNING
    runner.COUNT_WHILE_RUNNING = count_while_running
    try:
        with phase_clock() as phases, marked_generate():
            start = time.time()
            summary = runner.run_job(spec, mode="overwrite")
            end = time.time()
    finally:
        runner.COUNT_WHILE_RUNNING = previous
    found = []
    for path in glob.glob(os.path.join(marks, "*.json")):
        with open(path) as handle:
            found.append(json.load(handle))
    stats = OutputLayout(spec.output.uri).all_stats()
    first_shard = min(epoch_seconds(item["end_time"]) for item in stats) - start
    firsts = sorted(mark["first_batch"] - start for mark in found)
    timeline: dict[str, Any] = {name: [round(lo - start, 2), round(hi - start, 2)] for name, lo, hi in phases}
    timeline["actors model loaded"] = sorted(round(mark["ready"] - start, 2) for mark in found)
    timeline["actors first batch"] = [round(value, 2) for value in firsts]
    timeline["first committed shard"] = round(first_shard, 2)
    return {
        "first_shard_s": first_shard, "all_busy_s": firsts[-1] if len(firsts) >= actors else None,
        "actors_used": len(found), "nodes_used": len({mark["node"] for mark in found}),
        "wall_s": end - start, "images": summary.images, "balanced": summary.balanced, "timeline": timeline,
    }


def start_cluster(actors: int) -> Any:
    """A head node (2 CPUs) and ``actors`` worker nodes with one CPU and one (pretend) GPU each."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    for _ in range(actors):
        cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    return cluster


def variants(actors: int) -> list[tuple[str, list[str], bool]]:
    """``(label, --set lines, count while running)`` of each variant, pixelmill's first."""
    fixed, autoscale = f"stages.generate.concurrency={actors}", f"stages.generate.concurrency=[1,{actors}]"
    return [
        ("pixelmill, fixed pool", [fixed], True),
        ("Ray Data fixed pool, counts first", [fixed], False),
        ("Ray Data autoscaling [1,N], counts first", [autoscale, "stages.generate.initial_concurrency=1"], False),
        ("pixelmill autoscaling [1,N]", [autoscale], True),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=192)
    parser.add_argument("--actors", type=int, default=3, help="generate actors (one worker node each)")
    parser.add_argument("--batch", type=int, default=8, help="generate batch size")
    args = parser.parse_args(argv)
    from bench.common import job_spec

    work = tempfile.mkdtemp(prefix="pixelmill-bench-pools-")
    marks = os.environ[MARKS_VAR] = os.path.join(work, "marks")  # before the nodes start: their workers inherit it
    os.makedirs(marks)
    source = write_prompt_table(os.path.join(work, "prompts.parquet"), world_prompts(args.rows, seed=5))
    cluster = start_cluster(args.actors)
    results = {}
    try:
        # the generate actors ask for a GPU (one per worker node) and run on its CPU
        common = ["stages.generate.num_gpus=1", "stages.generate.device=cpu", "stages.encode.device=cpu",
                  f"stages.generate.batch_size={args.batch}", "output.samples_per_shard=32",
                  "defaults.width=32", "defaults.height=32", "defaults.steps=1"]
        warm = job_spec(source, os.path.join(work, "warm-up"), *common, score=None)
        one_variant(warm, marks=marks, count_while_running=True, actors=args.actors)  # workers, imports, caches
        for index, (label, sets, overlap) in enumerate(variants(args.actors)):
            spec = job_spec(source, os.path.join(work, f"out-{index}"), *common, *sets, score=None)
            results[label] = one_variant(spec, marks=marks, count_while_running=overlap, actors=args.actors)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    table = [{"variant": label, **{k: v for k, v in found.items() if k != "timeline"}}
             for label, found in results.items()]
    mine, fixed, autoscale = (results[label] for label, _, _ in variants(args.actors)[:3])
    ratios = {
        "first shard: Ray Data fixed / pixelmill": _ratio(fixed["first_shard_s"], mine["first_shard_s"]),
        "all N busy: Ray Data fixed / pixelmill": _ratio(fixed["all_busy_s"], mine["all_busy_s"]),
        "first shard: Ray Data autoscaling / pixelmill": _ratio(autoscale["first_shard_s"], mine["first_shard_s"]),
    }
    for label, found in results.items():
        print(f"\n{label} timeline (s from run_job):")
        for name, value in found["timeline"].items():
            print(f"  {name:24s} {value}")
    return report("pools", table, ratios, extra={
        "rows": args.rows, "actors": args.actors, "generate_batch": args.batch,
        "timelines": {label: found["timeline"] for label, found in results.items()},
    })


def _ratio(theirs: float | None, ours: float | None) -> dict[str, Any]:
    """A ratio entry for ``report``: theirs / ours (> 1: pixelmill earlier).

    None (never happened in that run): ``inf`` when only theirs never happened, 0 when ours did not.
    """
    if ours is None or ours <= 0:
        value = 0.0
    else:
        value = float("inf") if theirs is None else theirs / ours
    return {"value": value, "target": "> 1", "met": value > 1}


if __name__ == "__main__":
    main()
