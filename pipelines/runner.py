"""Run a job: start or join Ray, prepare the output, execute the plan, report."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pipelines.spec import JobSpec
from pipelines.storage import filesystem, join, redact, storage_env_vars

if TYPE_CHECKING:
    import ray.data

__all__ = ["MODES", "RunSummary", "run_job"]

Mode = Literal["resume", "overwrite", "append"]
MODES: tuple[str, ...] = ("resume", "overwrite", "append")
_SHARD_STATS = re.compile(r"(\d{5,})_stats\.json$")


@dataclass
class RunSummary:
    """Totals of one run; also written as ``_run.json``."""

    run_id: str
    output: str
    mode: str
    rows: int = 0
    skipped: int = 0
    images: int = 0
    errors: int = 0
    errors_by_stage: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    images_per_s: float = 0.0
    started: str = ""
    finished: str = ""
    spec: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """Return the one-line summary printed at the end of a run."""
        return (
            f"pixelmill: {self.rows + self.skipped} rows in, {self.skipped} skipped as done, "
            f"{self.images} images out, {self.errors} errors, "
            f"{len(self.shards)} shards, {self.wall_s:.1f} s, {self.images_per_s:.2f} images/s -> {self.output}"
        )


def init_ray(spec: JobSpec) -> None:
    """Join the cluster in ``ray.address`` or start a local runtime; forward storage variables."""
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=spec.ray.address,
        num_cpus=local_cpu_slots(spec) if spec.ray.address is None else None,
        runtime_env={"env_vars": storage_env_vars()},
        include_dashboard=False,
        log_to_driver=True,
    )


def local_cpu_slots(spec: JobSpec) -> int:
    """Return the logical CPUs for a local Ray runtime.

    Actor pools hold their CPUs for the whole run, and the read, image-encoding
    and write tasks need slots beside them or the run stalls; on a small
    machine the logical count is raised above the core count to make room.
    """
    if spec.ray.num_cpus is not None:
        return spec.ray.num_cpus
    actors = 0.0
    stages = [spec.stages.encode, spec.stages.generate] + ([spec.stages.style] if spec.style else [])
    for stage in stages:
        size = stage.concurrency[1] if isinstance(stage.concurrency, tuple) else stage.concurrency
        actors += size * stage.num_cpus
    return max(os.cpu_count() or 1, math.ceil(actors) + 2)


def committed_shards(spec: JobSpec) -> list[int]:
    """Return the numbers of the shards already committed at the output (stats file present)."""
    fs, root = filesystem(spec.output.uri, spec.storage_options)
    fs.invalidate_cache(root)  # s3fs caches listings per process; another process may have written since
    if not fs.exists(root):
        return []
    names = fs.glob(join(fs, root, "*_stats.json"))
    return sorted(int(m.group(1)) for m in (_SHARD_STATS.search(n) for n in names) if m)


@dataclass
class OutputPlan:
    """What a run finds at its output: where numbering continues and what is already done."""

    shard_offset: int
    done_parquet: list[str]
    skipped: int


def _prepare_output(spec: JobSpec, mode: Mode) -> OutputPlan:
    """Clean what dead runs left, apply the mode, and say what this run must skip.

    Only shards with a stats file are committed.  Temporaries of dead runs
    (``_tmp/``) and tars/Parquets whose stats file never came are removed, so
    their rows are simply done again.
    """
    fs, root = filesystem(spec.output.uri, spec.storage_options)
    fs.makedirs(root, exist_ok=True)
    if mode == "overwrite":
        for path in fs.ls(root, detail=False):
            fs.rm(path, recursive=True)
        return OutputPlan(shard_offset=0, done_parquet=[], skipped=0)
    _remove_tmp(spec)
    committed = set(committed_shards(spec))
    for path in fs.glob(join(fs, root, "*.tar")) + fs.glob(join(fs, root, "*.parquet")):
        number = re.search(r"(\d{5,})\.(tar|parquet)$", path)
        if number and int(number.group(1)) not in committed:
            fs.rm(path)
    offset = max(committed) + 1 if committed else 0
    if mode == "append" or not committed:
        return OutputPlan(shard_offset=offset, done_parquet=[], skipped=0)
    skipped = 0
    for shard in sorted(committed):
        with fs.open(join(fs, root, f"{shard:05d}_stats.json")) as f:
            skipped += json.load(f)["count"]
    parquet = [join(fs, root, f"{shard:05d}.parquet") for shard in sorted(committed)]
    return OutputPlan(shard_offset=offset, done_parquet=parquet, skipped=skipped)


def _done_ids(spec: JobSpec, paths: list[str]) -> "ray.data.Dataset | None":
    """Return a dataset of the ids already committed, read by Ray, never gathered on the driver."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    if not paths:
        return None
    fs, _ = filesystem(spec.output.uri, spec.storage_options)
    return ray.data.read_parquet(paths, columns=["id"], filesystem=PyFileSystem(FSSpecHandler(fs)))


def _write_run_json(spec: JobSpec, summary: RunSummary) -> None:
    fs, root = filesystem(spec.output.uri, spec.storage_options)
    with fs.open(join(fs, root, "_run.json"), "w") as f:
        json.dump(asdict(summary), f, indent=2, default=str)


def run_job(spec: JobSpec, *, mode: Mode = "resume") -> RunSummary:
    """Run a job to completion and return its summary.

    Args:
        spec: the validated job.
        mode: ``resume`` finishes what the output lacks (rows in committed
            shards are skipped), ``overwrite`` clears the output first,
            ``append`` adds a new batch after the existing shards.

    Raises:
        Exception: whatever stopped the job (bad input location, model, Ray).
    """
    import ray.data

    from pipelines.plan import build_dataset
    from pipelines.sink import ShardDatasink

    from pipelines.sources import list_input_files

    started, start = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    # Fail on a missing input before paying for Ray's start-up.
    listing = list_input_files(spec.input, spec.storage_options)
    init_ray(spec)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = spec.ray.preserve_order
    run_id = f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    plan = _prepare_output(spec, mode)
    sink = ShardDatasink(
        spec.output, run_id=run_id, shard_offset=plan.shard_offset, storage_options=spec.storage_options
    )
    build_dataset(spec, listing=listing, done_ids=_done_ids(spec, plan.done_parquet)).write_datasink(sink)
    _remove_tmp(spec)

    summary = RunSummary(run_id=run_id, output=spec.output.uri, mode=mode, skipped=plan.skipped)
    for stats in sorted(sink.shard_stats, key=lambda s: s["shard"]):
        summary.rows += stats["count"]
        summary.images += stats["successes"]
        summary.errors += stats["failures"]
        for reason, count in stats["failures_by_reason"].items():
            stage = reason.split(":", 1)[0]
            summary.errors_by_stage[stage] = summary.errors_by_stage.get(stage, 0) + count
        summary.shards.append(f"{stats['shard']:05d}")
    summary.wall_s = round(time.perf_counter() - start, 3)
    summary.images_per_s = round(summary.images / summary.wall_s, 3) if summary.wall_s else 0.0
    summary.started = started.isoformat(timespec="seconds")
    summary.finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    summary.spec = redact(spec.model_dump(mode="json"))
    _write_run_json(spec, summary)
    return summary


def _remove_tmp(spec: JobSpec) -> None:
    """Delete the output's ``_tmp/`` (this run's finished temporaries, or a dead run's leftovers)."""
    from pipelines.sink import TMP_DIR

    fs, root = filesystem(spec.output.uri, spec.storage_options)
    tmp = join(fs, root, TMP_DIR)
    if fs.exists(tmp):
        fs.rm(tmp, recursive=True)
