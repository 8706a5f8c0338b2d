"""``pixelmill retry-errors``: process the error records of an output again, exactly once.

The error records are read where they always are, the committed shards' Parquet (rows with
``status`` error; ``_errors/`` is a copy for readers), from the shards whose stats count
failures. An input-stage record carries its raw inputs (``schema.RAW_INPUT``), so a row
that is still invalid fails again with the same reason. The source shards are recorded in
``_retry.json`` before any work. After every retried row is committed in a new shard, the
retried records are moved out of their old shards in a commit of their own
(:func:`supersede`: Parquet rewritten without them, stats recounted, ``_errors/`` file
removed), then the manifest is deleted: every id is then in the output once, with its
latest status. A retry that dies is finished by the next one: same sources, rows already
committed in shards at or after ``first_shard`` are anti-joined away, and the supersede
step is idempotent, so no row is retried twice.
"""

from __future__ import annotations

from typing import Any

from pipelines import fingerprint, schema
from pipelines.accounting import RunSummary
from pipelines.layout import OutputLayout, shard_name
from pipelines.preflight import check_models, check_output_reachable
from pipelines.resume import OutputPlan, RunRows, clean_output, damage_by_name, done_after, done_keys
from pipelines.runner import (
    PreflightError,
    committed_schema,
    execute,
    finish_run,
    preflight,
    start_run,
    take_lease,
)
from pipelines.spec import JobSpec
from pipelines.storage import write_once

__all__ = ["NothingToRetry", "error_shards", "retry_errors", "supersede"]


class NothingToRetry(PreflightError):
    """The output holds no error record to retry (and no unfinished retry); nothing was done."""


def error_shards(layout: OutputLayout) -> dict[int, int]:
    """Return ``{shard: error records}`` for the whole committed shards whose stats count failures."""
    counts = {shard: int(stats.get("failures", 0)) for shard, stats in layout.check_shards().stats.items()}
    return {shard: count for shard, count in counts.items() if count}


def _nothing_to_retry(layout: OutputLayout) -> NothingToRetry:
    shards = layout.committed_shards()
    if not shards:
        return NothingToRetry(f"nothing to retry: {layout.uri} holds no committed shard")
    return NothingToRetry(
        f"nothing to retry: none of the {len(shards)} committed shards of {layout.uri} holds an error record "
        "(their stats files count 0 failures)"
    )


def retry_errors(spec: JobSpec) -> RunSummary:
    """Process the error records of the output again, commit them as new shards, supersede the old records.

    Returns:
        the run's summary; ``input_rows`` counts the error records retried.

    Raises:
        NothingToRetry: no committed shard holds an error record (nothing is written, no run record).
        PreflightError: the output cannot be reached, a model URI loads nothing, or another run
            holds the output's lease (before any work).
    """
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from pipelines.plan import process_rows, retried_rows
    from pipelines.sink import ShardDatasink

    layout = OutputLayout(spec.output.uri, spec.storage_options)
    with preflight():
        check_models(spec)
        check_output_reachable(spec)
        manifest: dict[str, Any] | None = None
        if layout.fs.exists(layout.retry_manifest):  # a retry that died: finish it
            manifest = layout.read_json(layout.retry_manifest)
        elif not error_shards(layout):
            raise _nothing_to_retry(layout)
    started, clock_start, run_id = start_run(spec)
    with preflight(), take_lease(spec, layout, run_id) as lease:
        check = clean_output(layout)
        committed, damaged = check.whole, damage_by_name(check)
    with lease:  # held until the run's record is written, released on success or failure
        offset = max(committed) + 1 if committed else 0
        if manifest is not None:
            plan = done_after(layout, [s for s in committed if s >= manifest["first_shard"]], offset,
                              covered=check.covered)
        else:
            sources_now = {shard_name(shard): count for shard, count in error_shards(layout).items()}
            manifest = {"run_id": run_id, "first_shard": offset, "sources": sources_now}
            layout.write_json(layout.retry_manifest, manifest)
            plan = OutputPlan(shard_offset=offset, done_parquet=[])
        sources = {int(shard): int(count) for shard, count in manifest["sources"].items()}
        sink = ShardDatasink(spec.output, run_id=run_id, shard_offset=offset, storage_options=spec.storage_options,
                             declared=committed_schema(layout))
        pending = [layout.shard_file("parquet", s) for s in sorted(sources)
                   if s in check.stats and check.stats[s]["failures"]]
        input_rows = skipped = 0
        if pending:
            records = ray.data.read_parquet(pending, filesystem=PyFileSystem(FSSpecHandler(layout.fs)))
            # Error records are one per row already: no duplicate marking (a duplicate record stays one).
            run_rows = RunRows(retried_rows(spec, records), None, done_keys(layout, plan), done_shards=plan.done_shards)
            input_rows, skipped = run_rows.counts()  # before the work: the progress display's total
            if input_rows > skipped:
                execute(spec, layout, process_rows(spec, run_rows.todo()), sink, total=input_rows - skipped)
        supersede(layout, sorted(sources), run_id=run_id)  # every retried row is now committed in a newer shard
        layout.fs.rm(layout.retry_manifest)
        # The settings it made images with (a later resume checks them); no input record: it read no input files.
        summary = RunSummary(run_id=run_id, output=spec.output.uri, mode="retry-errors", skipped=skipped,
                             input_rows=input_rows, settings=fingerprint.settings_of(spec), damaged_shards=damaged)
        rewritten = tuple(sorted(set(sources) & set(layout.committed_shards())))  # superseded, still committed
        return finish_run(spec, layout, summary, sink, started=started, clock_start=clock_start, rewritten=rewritten)


def supersede(layout: OutputLayout, shards: list[int], *, run_id: str) -> None:
    """Move the error records out of ``shards``, whose rows were retried into newer shards.

    Per shard, each step atomic and idempotent (a retry that dies between them is finished
    by the next): the Parquet is rewritten without its ``status`` error rows, the stats file
    is recounted (``count`` and ``failures`` less the moved records, which ``superseded``
    and ``superseded_by`` record), and the ``_errors/`` file is removed. The tar holds no
    error row and is left as it is. A shard that held only error records is removed whole,
    its stats file first (uncommitted, its other files are leftovers), so no shard is empty.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    committed = set(layout.committed_shards())
    for shard in shards:
        if shard not in committed:  # emptied by a retry that died after uncommitting it
            for path in layout.shard_files(shard):
                if layout.fs.exists(path):
                    layout.fs.rm(path)
            continue
        path = layout.shard_file("parquet", shard)
        with layout.fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
        kept = table.filter(pc.not_equal(table.column(schema.STATUS), schema.Status.ERROR.value))
        if not kept.num_rows:  # nothing would be left: no shard stays empty; uncommit it (stats first)
            for path in reversed(layout.shard_files(shard)):
                if layout.fs.exists(path):
                    layout.fs.rm(path)
            continue
        if kept.num_rows < table.num_rows:
            with write_once(layout.fs, path, staging_dir=layout.staging_dir(run_id)) as handle:
                pq.write_table(kept, handle)
        stats = layout.read_stats(shard)
        errors = layout.shard_file("errors", shard)
        if stats["failures"]:
            moved = int(stats["failures"])
            stats.update(count=stats["count"] - moved, failures=0, failures_by_reason={}, failure_examples={},
                         superseded=int(stats.get("superseded", 0)) + moved, superseded_by=run_id)
            if "files" in stats:  # the wholeness check's sizes (layout.check_shards): the new Parquet, no errors file
                files = {name: size for name, size in stats["files"].items() if name != layout.relative(errors)}
                files[layout.relative(path)] = int(layout.fs.info(path)["size"])
                stats["files"] = files
            layout.write_json(layout.shard_file("stats", shard), stats)
        if layout.fs.exists(errors):
            layout.fs.rm(errors)
