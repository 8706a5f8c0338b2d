"""The Ray Data plan: read -> prepare rows -> fan out -> [llm] -> encode -> generate -> [style] -> [score] ->
encode images -> shards."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from pipelines.dedupe import DUPLICATE_MARK, apply_marks
from pipelines.fanout import fan_out, fans_out, variations_of
from pipelines.images import encode_images
from pipelines.passthrough import pack
from pipelines.pools import image_encoding_kwargs, placed_stages, prepare_kwargs
from pipelines.resilience import stage_remote_args
from pipelines.rows import check_input_columns, prepare_rows
from pipelines.schema import (
    DUPLICATE_STAGE,
    ERROR,
    LLM_SEED,
    LLM_SEED_COLUMN,
    OUTPUT_COLUMNS,
    PROMPT,
    SEED,
    SOURCE_PROMPT,
    STAGE,
    STATUS,
    VARIATION_COLUMN,
    VARIATION_INDEX,
    Status,
)
from pipelines.sources import input_columns, list_input_files, read_prompts
from pipelines.spec import ColumnMap, JobSpec, StageSpec

__all__ = ["pool_options", "prepared_rows", "process_rows", "retried_rows", "style_columns", "text_columns"]


def pool_options(stage: StageSpec) -> dict[str, Any]:
    """Return the ``map_batches`` arguments that size a stage's actor pool.

    A fixed pool is ``ActorPoolStrategy(size=N)``: Ray Data starts all N actors when the execution
    starts.  An autoscaling pool starts ``StageSpec.pool_sizes``' initial actors (default its max,
    full from the start) rather than Ray Data's default, its min.
    """
    low, high, initial = stage.pool_sizes()
    if isinstance(stage.concurrency, tuple):
        compute = ray.data.ActorPoolStrategy(min_size=low, max_size=high, initial_size=initial)
    else:
        compute = ray.data.ActorPoolStrategy(size=high)
    return {
        "batch_size": stage.batch_size,
        "compute": compute,
        "num_gpus": stage.num_gpus,
        "num_cpus": stage.num_cpus,
        **stage_remote_args(),
    }


def style_columns(spec: JobSpec) -> tuple[str, ...]:
    """Return the input columns a style stage reads: settings, read as text like the canonical ones."""
    style = spec.style
    names = (style.column, style.strength_column, style.preserve_color_column) if style else ()
    return tuple(name for name in names if name)


def text_columns(spec: JobSpec) -> tuple[str, ...]:
    """Return the input columns read as text beyond the canonical ones: the style stage's and the templates'."""
    return tuple(dict.fromkeys((*style_columns(spec), *spec.template_columns())))


def prepared_rows(
    spec: JobSpec, *, listing: tuple | None = None, declared: pa.Schema | None = None
) -> ray.data.Dataset:
    """Return the job's input as canonical rows (``pipelines.rows``), lazily.

    Args:
        listing: the input files as listed by ``list_input_files``, if already known.
        declared: the run's pass-through schema (``pipelines.column_types``), if decided.
    """
    listing = listing or list_input_files(spec.input, spec.storage_options)
    ds = read_prompts(spec.input, spec.storage_options, listing=listing, text_columns=text_columns(spec),
                      declared=declared)
    if spec.limit is not None:
        ds = ds.limit(spec.limit)
    names = input_columns(listing)
    if names is None:  # no file has a first batch to show: ask Ray (reads past empty files)
        schema = ds.schema()
        names = None if schema is None else schema.names
    if names is not None:  # else no file has a row: zero rows in, zero out (0-byte files)
        # the runner's preflight did too
        check_input_columns(names, spec.input.columns, uri=spec.input.name, templates=spec.templates())
    # pyarrow batches: pass-through columns stay the reader's Arrow columns (no pandas round trip,
    # which turned uint64/decimal/huge integers and nullable ints into lossy or failing values).
    ds = ds.map_batches(
        cast(Any, prepare_rows),  # Ray's UDF type has no room for the keyword arguments fn_kwargs fills
        batch_format="pyarrow",
        fn_kwargs=prepare_kwargs(spec),
    )
    # Several images per prompt (pipelines.fanout): samples <id>/<k>, before duplicates and resume.
    return ds.map_batches(cast(Any, fan_out), batch_format="pyarrow",
                          fn_kwargs={"enabled": fans_out(spec, names), "variations": variations_of(spec)})


def retried_rows(spec: JobSpec, shard_rows: ray.data.Dataset) -> ray.data.Dataset:
    """Return the error records among committed shard rows as canonical rows to process again.

    A duplicate record (``pipelines.dedupe``) comes back as the same record: its id's first
    occurrence is committed, so retrying it would make a second row of that id.

    Output columns are dropped; ``prepare_rows`` puts an input-stage record's ``raw_input``
    back in place of its canonical columns. A fan-out sample comes back as itself (its id,
    ``parent_id``, ``image_index`` and seed as recorded): it is never fanned out again, but a
    record's bad per-row image count fails again with the same reason. A record of a job with an
    LLM stage gets its prompt as read back (``source_prompt``), its variation and LLM seed.
    """
    def to_input(batch: pa.Table) -> pa.Table:
        errors = _llm_inputs_back(batch.filter(pc.equal(batch.column(STATUS), Status.ERROR.value)))
        duplicate = pc.fill_null(pc.equal(errors[STAGE], DUPLICATE_STAGE), False)
        errors = errors.append_column(DUPLICATE_MARK, pc.if_else(duplicate, errors[ERROR], pa.scalar("", pa.string())))
        return errors.drop_columns([c for c in errors.column_names if c in OUTPUT_COLUMNS])

    return shard_rows.map_batches(to_input, batch_format="pyarrow").map_batches(
        cast(Any, prepare_rows),  # as in prepared_rows: keyword arguments from fn_kwargs
        batch_format="pyarrow",
        fn_kwargs={"columns": ColumnMap(), "defaults": spec.defaults, "job_seed": spec.seed,
                   "images_per_prompt": spec.images_per_prompt, "templates": spec.templates()},
    ).map_batches(
        cast(Any, fan_out), batch_format="pyarrow", fn_kwargs={"enabled": False}
    ).map_batches(apply_marks, batch_format="pyarrow")


def _llm_inputs_back(errors: pa.Table) -> pa.Table:
    """Return error records of an LLM job with the LLM stage's inputs back: the prompt as read, the
    variation and the LLM seed (the internal columns ``pipelines.fanout`` made); others as they are."""
    names = errors.column_names
    if LLM_SEED not in names:
        return errors
    source = pc.fill_null(errors[SOURCE_PROMPT], "")
    errors = errors.set_column(names.index(PROMPT), PROMPT, pc.if_else(pc.equal(source, ""), errors[PROMPT], source))
    return errors.append_column(VARIATION_COLUMN, pc.fill_null(errors[VARIATION_INDEX], 0)).append_column(
        LLM_SEED_COLUMN, pc.fill_null(errors[LLM_SEED], errors[SEED]))


def process_rows(spec: JobSpec, ds: ray.data.Dataset, *, ledger: str | None = None) -> ray.data.Dataset:
    """Return the lazy dataset of finished rows, in blocks of exactly one shard.

    Args:
        ds: the rows to process: canonical rows (:func:`prepared_rows` or :func:`retried_rows`)
            less those already done (``pipelines.resume.RunRows.todo``).
        ledger: the name of the run's budget ledger actor (``actors.budget``), when it has a budget.
    """
    # Non-text pass-through columns ride around the numpy-based stages as Arrow bytes
    # (pipelines.passthrough); the sink unpacks them, types and values as read.
    ds = ds.map_batches(cast(Any, pack), batch_format="pyarrow", fn_kwargs={"keep": list(style_columns(spec))})
    placed = placed_stages(spec)
    for stage_class, kwargs, resources in _metered(placed if ledger is None else _budgeted(placed, ledger)):
        with warnings.catch_warnings():
            # Ray 2.60 names num_cpus/num_gpus but has no named parameter for max_task_retries
            # (resilience.stage_remote_args); its deprecation notice is ours to act on, not the user's.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
            ds = ds.map_batches(stage_class, fn_constructor_kwargs=kwargs, **pool_options(resources))
    if spec.placement.encode_images == "task":
        ds = ds.map_batches(
            cast(Any, encode_images),  # as in prepared_rows: keyword arguments from fn_kwargs
            fn_kwargs=image_encoding_kwargs(spec),
            batch_size=min(64, spec.output.samples_per_shard),
        )
    return ds.repartition(target_num_rows_per_block=spec.output.samples_per_shard, strict=True)


def _budgeted(
    placed: list[tuple[Callable[..., Any], dict[str, Any], StageSpec]], ledger: str
) -> list[tuple[Callable[..., Any], dict[str, Any], StageSpec]]:
    """Wrap each pool in ``actors.budget.BudgetedPool``: each charges the ledger, the first one gates.

    The gate sits at the first model step so a deferred row costs no model time anywhere; the
    batches already past it finish (and commit), which bounds the overshoot (README: Cost and budget).
    """
    from actors.budget import BudgetedPool

    return [
        (BudgetedPool, {"pool": pool, "pool_kwargs": kwargs, "ledger": ledger, "num_gpus": resources.num_gpus,
                        "num_cpus": resources.num_cpus, "gate": index == 0}, resources)
        for index, (pool, kwargs, resources) in enumerate(placed)
    ]


def _metered(
    pools: list[tuple[Callable[..., Any], dict[str, Any], StageSpec]]
) -> list[tuple[Callable[..., Any], dict[str, Any], StageSpec]]:
    """Run each pool's callable inside ``actors.metered.MeteredPool``, outermost: its actors' busy and wait
    seconds reach ``_run.json``'s ``utilization`` (``pipelines.utilization``)."""
    from actors.metered import metered

    return [(metered(pool), {"pool": pool, "pool_kwargs": kwargs}, resources) for pool, kwargs, resources in pools]

