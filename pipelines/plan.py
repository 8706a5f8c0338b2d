"""The Ray Data plan: read -> prepare rows -> fan out -> [llm] -> encode -> generate -> [style] -> [score] ->
encode images -> shards."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from actors.encode import EncodeStage
from actors.generate import GenerateStage
from pipelines.dedupe import DUPLICATE_MARK, apply_marks
from pipelines.fanout import fan_out, fans_out, variations_of
from pipelines.images import encode_images
from pipelines.passthrough import pack
from pipelines.resilience import stage_remote_args
from pipelines.rows import attempt_seed, check_input_columns, llm_retry_seed, prepare_rows
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

# A pool's steps: ``(stage class or function, its kwargs)`` in the order they run on a batch.
Steps = list[tuple[Callable[..., Any], dict[str, Any]]]

__all__ = ["pool_options", "prepared_rows", "process_rows", "retried_rows", "style_columns", "text_columns"]


def pool_options(stage: StageSpec) -> dict[str, Any]:
    """Return the ``map_batches`` arguments that size a stage's actor pool."""
    if isinstance(stage.concurrency, tuple):
        compute = ray.data.ActorPoolStrategy(min_size=stage.concurrency[0], max_size=stage.concurrency[1])
    else:
        compute = ray.data.ActorPoolStrategy(size=stage.concurrency)
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
        fn_kwargs={"columns": spec.input.columns, "defaults": spec.defaults, "job_seed": spec.seed,
                   "images_per_prompt": spec.images_per_prompt, "templates": spec.templates()},
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
    placed = _placed_stages(spec)
    for stage_class, kwargs, resources in _metered(placed if ledger is None else _budgeted(placed, ledger)):
        with warnings.catch_warnings():
            # Ray 2.60 names num_cpus/num_gpus but has no named parameter for max_task_retries
            # (resilience.stage_remote_args); its deprecation notice is ours to act on, not the user's.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
            ds = ds.map_batches(stage_class, fn_constructor_kwargs=kwargs, **pool_options(resources))
    if spec.placement.encode_images == "task":
        ds = ds.map_batches(
            cast(Any, encode_images),  # as in prepared_rows: keyword arguments from fn_kwargs
            fn_kwargs=_image_encoding_kwargs(spec),
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


def _model_stages(spec: JobSpec) -> list[tuple[str, type, dict[str, Any], StageSpec]]:
    """The model stages of a job in order: ``(name, actor class, constructor kwargs, resources)``."""
    options = spec.storage_options
    stage_args = {"model": spec.model, "storage_options": options}
    stages: list[tuple[str, type, dict[str, Any], StageSpec]] = []
    if spec.llm is not None:  # first: the encode stage encodes the LLM's text
        from actors.llm import LlmStage

        stages.append(("llm", LlmStage, {"llm": spec.llm, "stage": spec.stages.llm, "image_model": spec.model,
                                         "storage_options": options, "seed_of": llm_retry_seed}, spec.stages.llm))
    stages += [
        ("encode", EncodeStage, {**stage_args, "stage": spec.stages.encode}, spec.stages.encode),
        ("generate", GenerateStage, {**stage_args, "stage": spec.stages.generate, "generate": spec.generate},
         spec.stages.generate),
    ]
    if spec.style is not None:
        from actors.style import StyleStage

        stages.append(("style", StyleStage, {"style": spec.style, "stage": spec.stages.style,
                                             "storage_options": options}, spec.stages.style))
    if spec.score is not None:
        from actors.score import ScoreStage

        stages.append(("score", ScoreStage, {"score": spec.score, "stage": spec.stages.score,
                                             "storage_options": options}, spec.stages.score))
    return stages


def _image_encoding_kwargs(spec: JobSpec) -> dict[str, Any]:
    return {"image_format": spec.output.image_format, "quality": spec.output.image_quality}


def _placed_stages(spec: JobSpec) -> list[tuple[Callable[..., Any], dict[str, Any], StageSpec]]:
    """The actor pools to run, after ``spec.placement``: each ``(class, constructor kwargs, resources)``.

    Without fusion every model stage is its own pool.  ``fuse_encode_generate`` runs the
    encode stage inside the generate pool (its resources, one ``FusedStage`` actor);
    ``encode_images: last_stage`` runs PNG/JPEG/WebP encoding inside the last model actor.
    With ``score.max_attempts > 1`` (``spec.regenerates``) generate, style and score run as one
    ``RegenerateStage`` in the generate pool (``JobSpec.pools``).
    """
    # a pool's steps: stage classes, and encode_images (a function) when it runs in the last one
    pools: list[tuple[Steps, StageSpec]] = []
    for name, stage_class, kwargs, resources in _model_stages(spec):
        if spec.stage_hosts()[name] == "generate" and name != "generate":
            # In the generate actors a fused stage shares their device: ``device: auto`` follows
            # the generate stage's GPUs (the fused stage's own num_gpus is 0 then).
            kwargs = {**kwargs, "stage": kwargs["stage"].model_copy(update={"num_gpus": spec.stages.generate.num_gpus})}
        if name == "generate" and spec.placement.fuse_encode_generate:
            pools[-1] = (pools[-1][0] + [(stage_class, kwargs)], resources)
        elif name in ("style", "score") and spec.regenerates:  # in the loop: the generate pool's actors
            pools[-1] = (pools[-1][0] + [(stage_class, kwargs)], pools[-1][1])
        else:
            pools.append(([(stage_class, kwargs)], resources))
    last_stage = spec.placement.encode_images == "last_stage"
    after: Steps = [(encode_images, _image_encoding_kwargs(spec))] if last_stage else []
    if spec.regenerates:
        return [*_placed(pools[:-1]), _regenerate_pool(spec, pools, after)]
    if after:
        steps, resources = pools[-1]
        pools[-1] = (steps + after, resources)
    return _placed(pools)


def _placed(pools: list[tuple[Steps, StageSpec]]) -> list[tuple[Callable[..., Any], dict[str, Any], StageSpec]]:
    """Each pool as ``(class, constructor kwargs, resources)``: its one stage, or a ``FusedStage`` of its steps."""
    from actors.fused import FusedStage

    return [
        (steps[0][0], steps[0][1], resources) if len(steps) == 1 else (FusedStage, {"steps": steps}, resources)
        for steps, resources in pools
    ]


def _regenerate_pool(
    spec: JobSpec,
    pools: list[tuple[Steps, StageSpec]],
    after: Steps,
) -> tuple[Callable[..., Any], dict[str, Any], StageSpec]:
    """The regenerate loop's pool (``actors.regenerate``): the generate pool's resources, running the
    generate pool's steps and every later pool's (style, score) as one attempt, image encoding after.

    ``pools[-1]`` is the generate pool, with style and score already appended to its steps.
    """
    from actors.regenerate import RegenerateStage

    steps, resources = pools[-1]
    first = next(n for n, (step, _) in enumerate(steps) if step is GenerateStage)
    kwargs = {"before": steps[:first], "attempt": steps[first:], "after": after, "score": spec.score,
              "seed_of": attempt_seed}
    return (RegenerateStage, kwargs, resources)
