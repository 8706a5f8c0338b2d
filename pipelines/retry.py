"""``pixelmill retry-errors``: process the rows of the errors table again, exactly once.

The error files being retried are recorded in ``_retry.json`` before any work and
deleted only after every retried row is committed, so a retry that dies is finished by
the next ``retry-errors`` (rows it already committed are anti-joined away) and no row
is retried twice.
"""

from __future__ import annotations

import datetime as dt

from pipelines.accounting import RunSummary
from pipelines.layout import OutputLayout
from pipelines.resume import OutputPlan, clean_output, done_after, done_ids
from pipelines.runner import (
    check_output_reachable,
    committed_schema,
    execute,
    finish_run,
    preflight,
    start_run,
    take_lease,
)
from pipelines.spec import JobSpec

__all__ = ["retry_errors"]


def retry_errors(spec: JobSpec) -> RunSummary:
    """Process the rows of the output's errors table again and commit them as new shards.

    Returns:
        the run's summary; ``input_rows`` counts the error records retried.

    Raises:
        PreflightError: the output cannot be reached, or another run holds its lease (before any work).
    """
    with preflight():
        check_output_reachable(spec)
    layout = OutputLayout(spec.output.uri, spec.storage_options)
    started, clock_start, run_id = start_run(spec)
    with preflight(), take_lease(spec, layout, run_id) as lease:
        committed = clean_output(layout)
    with lease:
        return _retry(spec, layout, committed, run_id=run_id, started=started, clock_start=clock_start)


def _retry(spec: JobSpec, layout: OutputLayout, committed: list[int], *, run_id: str, started: dt.datetime,
           clock_start: float) -> RunSummary:
    """Retry the error rows into shards after ``committed`` (the lease held); return the run's summary."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from pipelines.plan import process_rows, retried_rows
    from pipelines.sink import ShardDatasink

    offset = max(committed) + 1 if committed else 0
    if layout.fs.exists(layout.retry_manifest):  # a retry that died: finish it
        manifest = layout.read_json(layout.retry_manifest)
        plan = done_after(layout, [s for s in committed if s >= manifest["first_shard"]], offset)
        files = [p for p in manifest["error_files"] if layout.fs.exists(p)]
    else:
        files = layout.files("errors")
        manifest = {"run_id": run_id, "first_shard": offset, "error_files": files}
        layout.write_json(layout.retry_manifest, manifest)
        plan = OutputPlan(shard_offset=offset, done_parquet=[], skipped=0)
    sink = ShardDatasink(spec.output, run_id=run_id, shard_offset=offset, storage_options=spec.storage_options,
                         declared=committed_schema(layout))
    input_rows = 0
    if files:
        errors = ray.data.read_parquet(files, filesystem=PyFileSystem(FSSpecHandler(layout.fs)))
        rows = process_rows(spec, retried_rows(spec, errors), done_ids=done_ids(layout, plan.done_parquet))
        input_rows = errors.count()
        execute(spec, layout, rows, sink, total=max(0, input_rows - plan.skipped))
    for path in files:  # every row of these files is now committed in a newer shard
        layout.fs.rm(path)
    layout.fs.rm(layout.retry_manifest)
    summary = RunSummary(run_id=run_id, output=spec.output.uri, mode="retry-errors", skipped=plan.skipped,
                         input_rows=input_rows)
    return finish_run(spec, layout, summary, sink, started=started, clock_start=clock_start)
