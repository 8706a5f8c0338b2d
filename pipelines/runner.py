"""Run a job: start or join Ray, prepare the output, execute the plan, report."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pipelines import faults
from pipelines.resilience import configure_data_context
from pipelines.spec import JobSpec
from pipelines.storage import filesystem, is_local, join, redact, storage_env_vars, write_once
from pipelines.watchdog import RunStalled, Watchdog

if TYPE_CHECKING:
    import ray.data

__all__ = ["MODES", "PreflightError", "RunStalled", "RunSummary", "retry_errors", "run_job"]

Mode = Literal["resume", "overwrite", "append"]
MODES: tuple[str, ...] = ("resume", "overwrite", "append")
_SHARD_STATS = re.compile(r"(\d{5,})_stats\.json$")
_SHARD_FILE = re.compile(r"(\d{5,})\.(tar|parquet)$")
RETRY_MANIFEST = "_retry.json"
# A write task builds its shard's tar and Parquet and uploads them: CPU-bound work.  Sized
# at one CPU so Ray does not run more of them than there are cores; at half a CPU,
# ``bench.sink`` on 2 cores ran 12 shards in 17 s against 6.6 s at one CPU.  The retry count,
# Ray's default written out (a retried write rewrites the same shard names, see pipelines/sink.py) also
# keeps these args unlike the repartition's, which stops Ray Data fusing the two.
WRITE_TASK_OPTIONS = {"num_cpus": 1, "max_retries": 3}
logger = logging.getLogger(__name__)


class PreflightError(Exception):
    """The job cannot start (missing or unreadable input, unreachable output); nothing was done."""


@dataclass
class RunSummary:
    """Totals of one run; also written as ``_run.json``.

    The accounting equation: every input row of the run is an image, an
    error record, a filtered record or a row skipped as already done, so
    ``images + errors + filtered + skipped == input_rows`` (``balanced``).
    ``input_rows`` is counted by a separate pass over the input.
    """

    run_id: str
    output: str
    mode: str
    input_rows: int = 0
    rows: int = 0
    skipped: int = 0
    images: int = 0
    errors: int = 0
    filtered: int = 0
    balanced: bool = False
    equation: str = ""
    errors_by_stage: dict[str, int] = field(default_factory=dict)
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    errors_table: str = ""
    shards: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    images_per_s: float = 0.0
    started: str = ""
    finished: str = ""
    spec: dict[str, Any] = field(default_factory=dict)

    def balance(self) -> None:
        """Fill in ``equation`` and ``balanced`` from the counts."""
        total = self.images + self.errors + self.filtered + self.skipped
        self.balanced = total == self.input_rows
        self.equation = (
            f"{self.images} images + {self.errors} errors + {self.filtered} filtered + "
            f"{self.skipped} skipped = {total} {'==' if self.balanced else '!='} {self.input_rows} input rows"
        )

    @property
    def success_rate(self) -> float:
        """Images over rows that were meant to become images (filtered rows excluded)."""
        attempted = self.images + self.errors
        return self.images / attempted if attempted else 1.0

    def line(self) -> str:
        """Return the one-line summary printed at the end of a run."""
        return (
            f"pixelmill: {self.input_rows} rows in, {self.skipped} skipped as done, "
            f"{self.images} images out, {self.errors} errors, {self.filtered} filtered, "
            f"{len(self.shards)} shards, {self.wall_s:.1f} s, {self.images_per_s:.2f} images/s -> {self.output}"
        )


def init_ray(spec: JobSpec) -> None:
    """Join the cluster in ``ray.address`` or start a local runtime; forward storage variables."""
    import ray

    if ray.is_initialized():
        return
    env_vars = storage_env_vars()
    if faults.ENV_VAR in os.environ:  # tests only: workers must see the same fault rules
        env_vars[faults.ENV_VAR] = os.environ[faults.ENV_VAR]
        env_vars[faults.DRIVER_PID_VAR] = str(os.getpid())
    ray.init(
        address=spec.ray.address,
        num_cpus=local_cpu_slots(spec) if spec.ray.address is None else None,
        runtime_env={"env_vars": env_vars},
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
    for stage in spec.pools().values():
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


def _read_stats(spec: JobSpec, shard: int) -> dict[str, Any]:
    fs, root = filesystem(spec.output.uri, spec.storage_options)
    return json.loads(fs.cat_file(join(fs, root, f"{shard:05d}_stats.json")))


def _clean_output(spec: JobSpec) -> list[int]:
    """Remove what dead runs left (temporaries, shard files without stats); return committed shards."""
    from pipelines.sink import ERRORS_DIR

    fs, root = filesystem(spec.output.uri, spec.storage_options)
    _remove_tmp(spec)
    committed = set(committed_shards(spec))
    candidates = fs.glob(join(fs, root, "*.tar")) + fs.glob(join(fs, root, "*.parquet"))
    candidates += fs.glob(join(fs, root, ERRORS_DIR, "*.parquet"))
    for path in candidates:
        number = _SHARD_FILE.search(path)
        if number and int(number.group(1)) not in committed:
            logger.info("pixelmill: removing %s (its shard never committed)", path)
            fs.rm(path)
    return sorted(committed)


def _prepare_output(spec: JobSpec, mode: Mode) -> OutputPlan:
    """Clean what dead runs left, apply the mode, and say what this run must skip.

    Only shards with a stats file are committed; the rows of anything else
    are simply done again.
    """
    fs, root = filesystem(spec.output.uri, spec.storage_options)
    fs.makedirs(root, exist_ok=True)
    if mode == "overwrite":
        # An object store has no empty folders: a prefix nothing was written to does not exist.
        for path in fs.ls(root, detail=False) if fs.exists(root) else []:
            fs.rm(path, recursive=True)
        return OutputPlan(shard_offset=0, done_parquet=[], skipped=0)
    committed = _clean_output(spec)
    offset = max(committed) + 1 if committed else 0
    if mode == "append" or not committed:
        return OutputPlan(shard_offset=offset, done_parquet=[], skipped=0)
    return _done_after(spec, committed, offset)


def _done_after(spec: JobSpec, shards: list[int], offset: int) -> OutputPlan:
    """Return a plan that skips the rows of ``shards`` and numbers new shards from ``offset``."""
    fs, root = filesystem(spec.output.uri, spec.storage_options)
    skipped = sum(_read_stats(spec, shard)["count"] for shard in shards)
    parquet = [join(fs, root, f"{shard:05d}.parquet") for shard in shards]
    return OutputPlan(shard_offset=offset, done_parquet=parquet, skipped=skipped)


def _done_ids(spec: JobSpec, paths: list[str]) -> "ray.data.Dataset | None":
    """Return a dataset of the ids already committed, read by Ray, never gathered on the driver."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    if not paths:
        return None
    fs, _ = filesystem(spec.output.uri, spec.storage_options)
    return ray.data.read_parquet(paths, columns=["id"], filesystem=PyFileSystem(FSSpecHandler(fs)))


def _write_json(spec: JobSpec, name: str, payload: dict[str, Any]) -> None:
    from pipelines.sink import TMP_DIR

    fs, root = filesystem(spec.output.uri, spec.storage_options)
    with write_once(fs, join(fs, root, name), staging_dir=join(fs, root, TMP_DIR)) as f:
        f.write(json.dumps(payload, indent=2, default=str).encode())


def _start(spec: JobSpec) -> tuple[dt.datetime, float, str]:
    """Start or join Ray, configure Ray Data; return start time, clock and a new run id."""
    import ray.data

    started, start = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    init_ray(spec)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = spec.ray.preserve_order
    configure_data_context(context)
    return started, start, f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _execute(spec: JobSpec, dataset: "ray.data.Dataset", sink: Any) -> None:
    """Write ``dataset`` through ``sink`` under the watchdog."""
    with Watchdog(lambda: len(committed_shards(spec)), timeout_s=spec.ray.stall_timeout_s):
        # Own remote args keep the write from fusing with the repartition before it: a fused
        # task would hand every block it made to one write() call, i.e. one oversized shard.
        dataset.write_datasink(sink, ray_remote_args=WRITE_TASK_OPTIONS)
    _remove_tmp(spec)


def _summarize(
    spec: JobSpec, sink: Any, *, run_id: str, mode: str, plan: OutputPlan, input_rows: int,
    started: dt.datetime, start: float,
) -> RunSummary:
    from pipelines.sink import ERRORS_DIR

    fs, root = filesystem(spec.output.uri, spec.storage_options)
    summary = RunSummary(
        run_id=run_id, output=spec.output.uri, mode=mode, skipped=plan.skipped, input_rows=input_rows,
        errors_table=join(fs, spec.output.uri, ERRORS_DIR),
    )
    for stats in sorted(sink.shard_stats, key=lambda s: s["shard"]):
        summary.rows += stats["count"]
        summary.images += stats["successes"]
        summary.errors += stats["failures"]
        summary.filtered += stats.get("filtered", 0)
        for reason, count in stats["failures_by_reason"].items():
            stage = reason.split(":", 1)[0]
            summary.errors_by_stage[stage] = summary.errors_by_stage.get(stage, 0) + count
            summary.errors_by_reason[reason] = summary.errors_by_reason.get(reason, 0) + count
        summary.shards.append(f"{stats['shard']:05d}")
    summary.balance()
    summary.wall_s = round(time.perf_counter() - start, 3)
    summary.images_per_s = round(summary.images / summary.wall_s, 3) if summary.wall_s else 0.0
    summary.started = started.isoformat(timespec="seconds")
    summary.finished = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    summary.spec = redact(spec.model_dump(mode="json"))
    _write_json(spec, "_run.json", asdict(summary))
    _remove_tmp(spec)
    if spec.output.report:
        _write_report(spec)
    if not summary.balanced:
        logger.error("pixelmill: the run does not balance: %s", summary.equation)
    return summary


def _write_report(spec: JobSpec) -> None:
    """Write ``report.html``; a report that fails is logged, never a failed run (the data is written)."""
    from pipelines.report import build_report

    try:
        logger.info("pixelmill: report %s", build_report(spec.output.uri, spec.storage_options))
    except Exception as error:  # noqa: BLE001
        logger.warning("pixelmill: could not write report.html: %s: %s", type(error).__name__, error)


def run_job(spec: JobSpec, *, mode: Mode = "resume") -> RunSummary:
    """Run a job to completion and return its summary.

    Args:
        spec: the validated job.
        mode: ``resume`` finishes what the output lacks (rows in committed
            shards are skipped), ``overwrite`` clears the output first,
            ``append`` adds a new batch after the existing shards.

    Raises:
        FileNotFoundError: the input is missing (before any work).
        RunStalled: the watchdog saw no shard commit for ``ray.stall_timeout_s``.
        Exception: whatever else stopped the job (model, Ray).
    """
    from pipelines.plan import build_dataset, prepared_rows
    from pipelines.sink import ShardDatasink
    from pipelines.sources import list_input_files

    # Fail on a missing input or an unreachable output before paying for Ray's start-up.
    with _preflight():
        listing = list_input_files(spec.input, spec.storage_options)
        check_output_reachable(spec)
    started, start, run_id = _start(spec)
    with _preflight():
        plan = _prepare_output(spec, mode)
        dataset = build_dataset(spec, listing=listing, done_ids=_done_ids(spec, plan.done_parquet))
    sink = ShardDatasink(
        spec.output, run_id=run_id, shard_offset=plan.shard_offset, storage_options=spec.storage_options
    )
    _execute(spec, dataset, sink)
    input_rows = prepared_rows(spec, listing=listing).count()
    return _summarize(
        spec, sink, run_id=run_id, mode=mode, plan=plan, input_rows=input_rows, started=started, start=start
    )


def retry_errors(spec: JobSpec) -> RunSummary:
    """Process the rows of the output's errors table again and commit them as new shards.

    The error files being retried are recorded in ``_retry.json`` before any
    work and deleted only after every retried row is committed, so a retry that
    dies is finished by the next ``retry-errors`` (rows it already committed
    are skipped) and no row is retried twice.
    """
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from pipelines.plan import process_rows, retried_rows
    from pipelines.sink import ERRORS_DIR, ShardDatasink

    with _preflight():
        check_output_reachable(spec)
    fs, root = filesystem(spec.output.uri, spec.storage_options)
    started, start, run_id = _start(spec)
    committed = _clean_output(spec)
    offset = max(committed) + 1 if committed else 0
    manifest_path = join(fs, root, RETRY_MANIFEST)
    if fs.exists(manifest_path):  # a retry that died: finish it
        manifest = json.loads(fs.cat_file(manifest_path))
        plan = _done_after(spec, [s for s in committed if s >= manifest["first_shard"]], offset)
        files = [p for p in manifest["error_files"] if fs.exists(p)]
    else:
        files = sorted(fs.glob(join(fs, root, ERRORS_DIR, "*.parquet")))
        manifest = {"run_id": run_id, "first_shard": offset, "error_files": files}
        _write_json(spec, RETRY_MANIFEST, manifest)
        plan = OutputPlan(shard_offset=offset, done_parquet=[], skipped=0)
    sink = ShardDatasink(spec.output, run_id=run_id, shard_offset=offset, storage_options=spec.storage_options)
    input_rows = 0
    if files:
        errors = ray.data.read_parquet(files, filesystem=PyFileSystem(FSSpecHandler(fs)))
        _execute(spec, process_rows(spec, retried_rows(spec, errors), done_ids=_done_ids(spec, plan.done_parquet)), sink)
        input_rows = errors.count()
    for path in files:  # every row of these files is now committed in a newer shard
        fs.rm(path)
    fs.rm(manifest_path)
    return _summarize(
        spec, sink, run_id=run_id, mode="retry-errors", plan=plan, input_rows=input_rows, started=started, start=start
    )


def root_cause(error: BaseException) -> BaseException:
    """Return the user-facing error inside a Ray task error (its ``cause``), or the error itself."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def first_line(error: BaseException) -> str:
    """Return an error's first message line (Ray appends retry hints on further lines)."""
    return str(error).strip().split("\n", 1)[0] or type(error).__name__


@contextmanager
def _preflight() -> Iterator[None]:
    """Turn any error of the steps before work starts into a ``PreflightError`` with its root message."""
    try:
        yield
    except PreflightError:
        raise
    except Exception as error:  # noqa: BLE001 - reported to the user as one line, nothing was done
        raise PreflightError(first_line(root_cause(error))) from error


def check_output_reachable(spec: JobSpec) -> None:
    """Raise ``OSError`` with a clear message when the output location cannot be reached or written."""
    fs, root = filesystem(spec.output.uri, spec.storage_options)
    # Object stores have no folders: probe the bucket (a HEAD), which also checks the credentials.
    probe = root if is_local(fs) else root.split("/", 1)[0]
    try:
        fs.makedirs(root, exist_ok=True)
        fs.info(probe)
    except Exception as error:  # noqa: BLE001 - any client error means the same to the user
        raise OSError(f"output.uri: cannot reach {spec.output.uri}: {type(error).__name__}: {error}") from error


def _remove_tmp(spec: JobSpec) -> None:
    """Delete the output's ``_tmp/`` (this run's finished temporaries, or a dead run's leftovers)."""
    from pipelines.sink import TMP_DIR

    fs, root = filesystem(spec.output.uri, spec.storage_options)
    tmp = join(fs, root, TMP_DIR)
    if fs.exists(tmp):
        fs.rm(tmp, recursive=True)
