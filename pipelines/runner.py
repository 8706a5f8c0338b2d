"""Run a job: start or join Ray, prepare the output, execute the plan, record the run.

The steps a run shares with ``retry-errors`` (``pipelines.retry``) live here: starting
Ray, the preflight, executing a plan through the sink under the watchdog, and writing
the run's record and report. What a run finds at its output is ``pipelines.resume``;
its totals are ``pipelines.accounting``; every file name is ``pipelines.layout``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pipelines import faults
from pipelines.accounting import RunSummary, output_totals
from pipelines.layout import ERRORS_DIR, OutputLayout, ShardCheck
from pipelines.lease import Lease
from pipelines.preflight import check_models, check_output_reachable, check_reachable
from pipelines.progress import RunProgress, configure_ray_progress
from pipelines.resilience import configure_data_context
from pipelines.resume import MODES, Mode, RunRows, check_mode, done_keys, prepare_output
from pipelines.spec import JobSpec
from pipelines.storage import redact, storage_env_vars
from pipelines.watchdog import RunStalled, Watchdog

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from actors.budget import RunBudget

__all__ = ["MODES", "PreflightError", "RunStalled", "RunSummary", "check_job", "run_job"]

# A write task builds its shard's tar and Parquet and uploads them: CPU-bound work.  Sized
# at one CPU so Ray does not run more of them than there are cores; at half a CPU,
# ``bench.sink`` on 2 cores ran 12 shards in 17 s against 6.6 s at one CPU.  The retry count,
# Ray's default written out (a retried write rewrites the same shard names, see pipelines/sink.py) also
# keeps these args unlike the repartition's, which stops Ray Data fusing the two.
WRITE_TASK_OPTIONS = {"num_cpus": 1, "max_retries": 3}
# Ray Data starts a pool's actors (each loads its model) when the main execution starts, so the
# counting passes run beside it rather than before it (``execute_counting``). ``bench.pools``
# sets it False to measure the old order, counts first.
COUNT_WHILE_RUNNING = True
logger = logging.getLogger(__name__)


class PreflightError(Exception):
    """The job cannot start (missing or unreadable input, unreachable storage, a model URI that loads nothing)."""


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


def start_run(spec: JobSpec) -> tuple[dt.datetime, float, str]:
    """Start or join Ray, configure Ray Data; return start time, clock and a new run id."""
    import ray.data

    started, clock_start = dt.datetime.now(dt.UTC), time.perf_counter()
    init_ray(spec)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = spec.ray.preserve_order
    configure_data_context(context)
    configure_ray_progress(context, enabled=spec.ray.progress_bars)
    return started, clock_start, f"{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def execute(
    spec: JobSpec, layout: OutputLayout, dataset: ray.data.Dataset, sink: Any, *,
    total: int | Future[tuple[int, int]] | None = None,
) -> None:
    """Write ``dataset`` through ``sink`` under the watchdog, which watches the committed-shard count.

    With ``total`` (the rows this run has to do, or the future ``(input_rows, skipped)`` of
    :func:`execute_counting`), ``pipelines.progress`` shows rows done, images/s, errors and ETA
    while the shards commit.
    """
    progress = None
    if isinstance(total, Future):  # the counting passes run beside this one: the total comes later
        progress = shown = RunProgress(layout.committed_shards, layout.read_stats, total=None)
        total.add_done_callback(lambda counted: _set_total(shown, counted))
    elif total is not None:
        progress = RunProgress(layout.committed_shards, layout.read_stats, total=total)
    with (
        Watchdog(lambda: len(layout.committed_shards()), timeout_s=spec.ray.stall_timeout_s),
        progress or nullcontext(),
    ):
        # Own remote args keep the write from fusing with the repartition before it: a fused
        # task would hand every block it made to one write() call, i.e. one oversized shard.
        dataset.write_datasink(sink, ray_remote_args=WRITE_TASK_OPTIONS)
    layout.remove_tmp()


def _set_total(progress: RunProgress, counted: Future[tuple[int, int]]) -> None:
    """Give the progress display the rows to do once the counting passes answer (a failed count: none)."""
    if counted.exception() is None:
        input_rows, skipped = counted.result()
        progress.set_total(input_rows - skipped)


def execute_counting(
    spec: JobSpec, layout: OutputLayout, dataset: ray.data.Dataset, sink: Any, count: Callable[[], tuple[int, int]]
) -> tuple[int, int]:
    """Execute ``dataset`` (:func:`execute`) while ``count`` (``RunRows.counts``) runs beside it; return its counts.

    The counting passes are Ray Data executions of their own with no model stage; run first, they
    kept the pools' actors from starting (and loading their models) until both had read the input
    (``bench.pools`` measures the difference).  Only for a run with nothing to skip: a resume must
    know first whether anything is left to do, so that it starts no pool for nothing (so does an
    input of 0-byte files).

    Raises:
        Exception: what the execution raised, else what the count raised.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelmill-count") as pool:
        counted = pool.submit(count)
        execute(spec, layout, dataset, sink, total=counted)
        return counted.result()


def finish_run(
    spec: JobSpec, layout: OutputLayout, summary: RunSummary, sink: Any, *, started: dt.datetime, clock_start: float,
    budget: RunBudget | None = None, rewritten: tuple[int, ...] = (),
) -> RunSummary:
    """Index the run's shards, count the output into ``summary``, write the run's records and the report; return it.

    The index (``pipelines.history``) comes first, so the output's totals read it too.

    Args:
        budget: the run's budget ledger (``actors.budget``), when the spec has a budget.
        rewritten: committed shards this run rewrote in place (``pipelines.retry.supersede``):
            indexed with its new shards, so the next start-up need not read them one by one.
    """
    summary.errors_table = layout.display(ERRORS_DIR)
    summary.add_shards(sink.shard_stats)
    add_cost(spec, summary, deferred=sink.deferred, budget=budget)
    _write_index(layout, summary.run_id, sorted({*rewritten, *(s["shard"] for s in sink.shard_stats)}))
    summary.dataset = output_totals(layout.all_stats())
    summary.finish(started=started, clock_start=clock_start)
    summary.warnings += score_warnings(spec, summary)
    summary.diversity = _measure_diversity(spec, layout, summary.run_id, [s["shard"] for s in sink.shard_stats])
    summary.spec = redact(spec.model_dump(mode="json"))
    record = asdict(summary)
    layout.write_json(layout.run_record(summary.run_id), record)
    layout.write_json(layout.run_record(), record)
    layout.remove_tmp()
    _write_card(layout, spec, images=summary.dataset["images"])
    if spec.output.report:
        _write_report(layout)
    if not summary.balanced:
        logger.error("pixelmill: the run does not balance: %s", summary.equation)
    return summary


def add_cost(spec: JobSpec, summary: RunSummary, *, deferred: int, budget: RunBudget | None) -> None:
    """Fill in ``summary``'s cost figures (``pipelines.cost``), deferred rows and budget record."""
    from pipelines.cost import run_cost

    summary.deferred = deferred
    summary.cost = run_cost(spec, summary.busy_s, images=summary.images)
    if budget is not None:
        summary.budget = budget.record()
        summary.budget_spent = deferred > 0


def score_warnings(spec: JobSpec, summary: RunSummary) -> list[str]:
    """Say when a run's images score far below what its built-in scorer gives matched pairs.

    Far below: under the midpoint of the matched and shuffled levels of the model card
    (``models.builtin.SCORE_LEVELS``), i.e. nearer to images of other captions than to
    images of their own. Only built-in scorers have known levels.
    """
    from models.builtin import SCORE_LEVELS
    from models.store import BUILTIN_PREFIX

    if spec.score is None or summary.clip_score_mean is None or spec.style is not None:
        return []  # styled images are not what the scorer's card measured
    level = SCORE_LEVELS.get(spec.score.model.uri.removeprefix(BUILTIN_PREFIX))
    if level is None or summary.clip_score_mean >= (level[0] + level[1]) / 2:
        return []
    return [
        f"images score {summary.clip_score_mean:.1f} on average with {spec.score.model.uri}, far below the "
        f"{level[0]:.1f} it gives images that match their captions ({level[1]:.1f} for mismatched ones): "
        f"the prompts are likely outside what {spec.model.uri} can draw (README: Built-in models)"
    ]


def _measure_diversity(spec: JobSpec, layout: OutputLayout, run_id: str, shards: list[int]) -> dict[str, Any] | None:
    """Return the diversity figures of the shards this run committed (``pipelines.diversity``).

    Figures that fail are logged and left out (None), never a failed run: the data is written.
    """
    from pipelines.diversity import measure_run

    try:
        return measure_run(layout, shards, spec.diversity, run_id=run_id)
    except Exception as error:  # noqa: BLE001
        logger.warning("pixelmill: could not measure diversity: %s: %s", type(error).__name__, error)
        return None


def _write_index(layout: OutputLayout, run_id: str, shards: list[int]) -> None:
    """Write the run's index (``pipelines.history``); one that fails is logged, never a failed run.

    Without it the next start-up reads these shards' stats and Parquets one by one: slower, as correct.
    """
    from pipelines.history import write_index

    try:
        write_index(layout, run_id, shards)
    except Exception as error:  # noqa: BLE001
        logger.warning("pixelmill: could not write the run index: %s: %s", type(error).__name__, error)


def _write_card(layout: OutputLayout, spec: JobSpec, *, images: int) -> None:
    """Write the dataset card (``pipelines.card``); a card that fails is logged, never a failed run."""
    from pipelines.card import write_card

    try:
        write_card(layout, image_format=spec.output.image_format, images=images)
    except Exception as error:  # noqa: BLE001
        logger.warning("pixelmill: could not write README.md: %s: %s", type(error).__name__, error)


def _write_report(layout: OutputLayout) -> None:
    """Write ``report.html``; a report that fails is logged, never a failed run (the data is written)."""
    from pipelines.report import build_report

    try:
        logger.info("pixelmill: report %s", build_report(layout.uri, layout.storage_options))
    except Exception as error:  # noqa: BLE001
        logger.warning("pixelmill: could not write report.html: %s: %s", type(error).__name__, error)


def run_job(
    spec: JobSpec, *, mode: Mode = "resume", allow_spec_change: bool = False, force: bool = False
) -> RunSummary:
    """Run a job to completion and return its summary.

    Args:
        spec: the validated job.
        mode: ``resume`` finishes what the output lacks (rows in committed
            shards are skipped), ``overwrite`` clears the output first,
            ``append`` adds a new batch after the existing shards.
        allow_spec_change: resume even when the settings differ from the output's latest
            run's (``pipelines.fingerprint``).
        force: overwrite an output that holds files pixelmill did not write (they stay).

    Raises:
        PreflightError: storage is unreachable, the input or a model is missing, or a resume
            would mix two specs or renumber rows (before any work).
        RunStalled: the watchdog saw no shard commit for ``ray.stall_timeout_s``.
        Exception: whatever else stopped the job (model, Ray).
    """
    from actors.budget import open_ledger
    from pipelines.dedupe import first_occurrences
    from pipelines.fanout import makes_samples
    from pipelines.plan import prepared_rows, process_rows
    from pipelines.rows import check_input_columns
    from pipelines.sink import ShardDatasink
    from pipelines.sources import input_columns, list_input_files

    # Fail on unreachable storage, a missing model or input, a missing prompt column, an unreachable
    # output or an input that does not fit the output's schema before paying for Ray's start-up.
    layout = OutputLayout(spec.output.uri, spec.storage_options)
    with preflight():
        check_job(spec)
        listing = list_input_files(spec.input, spec.storage_options)
        check_apart(spec, listing, layout)
        names = input_columns(listing, columns=spec.input.columns)
        if names is not None:  # no file has a first batch: the plan checks what Ray reads
            check_input_columns(names, spec.input.columns, uri=spec.input.name, templates=spec.templates())
        check_output_reachable(spec)
        check_mode(layout, mode, force=force)
        # One listing of the output for the checks before the lease (``prepare_output`` lists it again
        # under the lease: another run may commit shards until then).
        check = None if mode == "overwrite" else layout.check_shards()
        declared = run_schema(spec, layout, listing, mode, check)
        settings, input_record = made_from(spec, layout, listing, mode, allow_spec_change=allow_spec_change,
                                           committed=None if check is None else bool(check.stats or check.damaged))
    started, clock_start, run_id = start_run(spec)
    with preflight(), take_lease(spec, layout, run_id) as lease:
        plan = prepare_output(layout, mode)
        rows = prepared_rows(spec, listing=listing, declared=declared)
        input_bytes = sum(size for _, size, _ in input_record["files"]) if input_record["files"] else None
        firsts = first_occurrences(rows, input_bytes=input_bytes)
        run_rows = RunRows(rows, firsts, done_keys(layout, plan), done_shards=plan.done_shards)
    # held until the run's record is written, released on success or failure; the ledger only with a budget
    with lease, open_ledger(spec, run_id) as budget:
        with preflight():
            dataset = process_rows(spec, run_rows.todo(), ledger=None if budget is None else budget.name)
        sink = ShardDatasink(
            spec.output, run_id=run_id, shard_offset=plan.shard_offset, storage_options=spec.storage_options,
            declared=declared,
        )
        # Counted by Ray (no model stage in their plans): the equation's input rows and skipped rows.
        # Nothing to skip (and input files not all empty): count while the pools start.
        if run_rows.done is None and input_bytes != 0 and COUNT_WHILE_RUNNING:
            input_rows, skipped = execute_counting(spec, layout, dataset, sink, run_rows.counts)
        else:
            input_rows, skipped = run_rows.counts()
            if input_rows > skipped:  # a resume with nothing to do starts no actor pool and loads no model
                execute(spec, layout, dataset, sink, total=input_rows - skipped)
        summary = RunSummary(run_id=run_id, output=spec.output.uri, mode=mode, skipped=skipped, input_rows=input_rows,
                             settings=settings, input=input_record, damaged_shards=plan.damaged)
        if makes_samples(spec, names):  # input_rows counts samples: say how many prompts they came from
            summary.prompts, summary.images_per_prompt = run_rows.prompts(), spec.images_per_prompt
            summary.variations = spec.llm.variations if spec.llm is not None else 1
        return finish_run(spec, layout, summary, sink, started=started, clock_start=clock_start, budget=budget)


@contextmanager
def take_lease(spec: JobSpec, layout: OutputLayout, run_id: str) -> Iterator[Lease]:
    """Take the output's lease (``pipelines.lease``) and yield it; released only if the block raises.

    The caller holds it on with ``with lease:`` around the rest of the run, so it is released
    after the run's last write, on success or failure.

    Raises:
        LeaseHeld: another live run writes the output.
    """
    lease = Lease(layout, run_id, timeout_s=spec.output.lease_timeout_s).acquire()
    try:
        yield lease
    except BaseException:
        lease.release()
        raise


def check_apart(spec: JobSpec, listing: tuple, layout: OutputLayout) -> None:
    """Refuse an input inside the output, or an output inside an input folder, in every mode.

    Raises:
        ValueError: the two overlap (an overwrite would delete the input, a later run would
            read the shards as prompts).
    """
    from pipelines.storage import filesystem

    fs, files, _, _ = listing
    if spec.input.uri is None or type(fs) is not type(layout.fs):  # a grid has no files
        return
    output = layout.root.rstrip(layout.fs.sep) + layout.fs.sep
    inside = [path for path in files if path.startswith(output)]
    if inside:
        raise ValueError(
            f"input {spec.input.uri} is inside the output {spec.output.uri} ({inside[0]}); "
            "put the input somewhere else: pixelmill writes and cleans the output folder"
        )
    _, input_path = filesystem(spec.input.uri, spec.storage_options)
    if fs.isdir(input_path) and output.startswith(input_path.rstrip(fs.sep) + fs.sep):
        raise ValueError(
            f"output {spec.output.uri} is inside the input folder {spec.input.uri}; a later run would read "
            "its shards as prompts: write the output somewhere else"
        )


def check_job(spec: JobSpec) -> None:
    """Check from the driver, first of all, that the input's storage answers and the models exist.

    The output is checked later (``check_output_reachable``), after the checks that must find
    no output folder created (``check_apart``).

    Raises:
        OSError: the first check that fails, as one line naming the spec key (``pipelines.preflight``).
    """
    if spec.input.uri is not None:  # a grid is built from the spec
        check_reachable(spec.input.uri, spec.storage_options, key="input.uri", bucket_must_exist=False)
    check_models(spec)


def made_from(
    spec: JobSpec, layout: OutputLayout, listing: tuple, mode: Mode, *, allow_spec_change: bool = False,
    committed: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return this run's settings and input records (``pipelines.fingerprint``); check a resume with them.

    Args:
        committed: whether the output has committed shards, when already listed (None: list them).

    Raises:
        ResumeRefused: a resume would mix two specs or renumber positional rows.
    """
    from pipelines import fingerprint, schema
    from pipelines.sources import input_columns

    id_column = spec.input.columns.id or schema.ID
    names = input_columns(listing, columns=spec.input.columns) or []
    positional = id_column not in names
    settings = fingerprint.settings_of(spec, names)
    input_record = fingerprint.input_of(listing, positional_ids=positional)
    if mode == "resume" and (layout.committed_shards() if committed is None else committed):
        fingerprint.check_resume(layout, input_uri=spec.input.name, settings=settings, input_record=input_record,
                                 allow_spec_change=allow_spec_change)
    return settings, input_record


def committed_schema(layout: OutputLayout, check: ShardCheck | None = None) -> pa.Schema | None:
    """Return the pass-through schema of the output's whole committed shards (its latest one's), or None.

    A damaged shard (``OutputLayout.check_shards``) is left out: the run removes it and redoes its rows.

    Args:
        check: the output's shards as already listed (``OutputLayout.check_shards``); None lists them.
    """
    from pipelines import column_types

    committed = (check or layout.check_shards()).whole
    if not committed:
        return None
    return column_types.decide([layout.shard_schema(committed[-1])], ())


def run_schema(
    spec: JobSpec, layout: OutputLayout, listing: tuple, mode: Mode, check: ShardCheck | None = None
) -> pa.Schema:
    """Return the pass-through schema this run writes with (``pipelines.column_types``, rules 1-3).

    ``check``: the output's shards as already listed (None lists them).

    Raises:
        ValueError: the input has a column the output's committed shards lack.
    """
    from pipelines import column_types
    from pipelines.plan import text_columns
    from pipelines.sources import passthrough_schema

    scanned = passthrough_schema(listing, columns=spec.input.columns, extra_text=text_columns(spec))
    return column_types.for_run(scanned, None if mode == "overwrite" else committed_schema(layout, check))


def root_cause(error: BaseException) -> BaseException:
    """Return the user-facing error inside a Ray task error (its ``cause``), or the error itself."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def first_line(error: BaseException) -> str:
    """Return an error's first message line (Ray appends retry hints on further lines)."""
    return str(error).strip().split("\n", 1)[0] or type(error).__name__


@contextmanager
def preflight() -> Iterator[None]:
    """Turn any error of the steps before work starts into a ``PreflightError`` with its root message."""
    try:
        yield
    except PreflightError:
        raise
    except Exception as error:  # noqa: BLE001 - reported to the user as one line, nothing was done
        raise PreflightError(first_line(root_cause(error))) from error
