"""The Ray Data plan: read -> prepare rows -> encode -> generate -> [style] -> [score] -> encode images -> shards."""

from __future__ import annotations

from typing import Any

import ray.data

from actors.encode import EncodeStage
from actors.generate import GenerateStage
from pipelines.images import encode_images
from pipelines.resilience import stage_remote_args
from pipelines.rows import INPUT_ERROR_COLUMN, OUTPUT_COLUMNS, check_passthrough_columns, prepare_rows
from pipelines.sources import read_prompts
from pipelines.spec import ColumnMap, JobSpec, StageSpec

__all__ = ["build_dataset", "pool_options", "prepared_rows", "process_rows"]


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


def prepared_rows(spec: JobSpec, *, listing: tuple | None = None) -> ray.data.Dataset:
    """Return the job's input as canonical rows (``pipelines.rows``), lazily.

    Args:
        listing: the input files as listed by ``list_input_files``, if already known.
    """
    ds = read_prompts(spec.input, spec.storage_options, listing=listing)
    if spec.limit is not None:
        ds = ds.limit(spec.limit)
    input_columns = [c for c in ds.schema().names if c not in ("source", "source_row", INPUT_ERROR_COLUMN)]
    if spec.input.columns.prompt not in input_columns:
        raise ValueError(
            f"input.columns.prompt: column {spec.input.columns.prompt!r} not in the input "
            f"{spec.input.uri} (columns: {input_columns})"
        )
    check_passthrough_columns(input_columns, spec.input.columns)
    return ds.map_batches(
        prepare_rows,
        batch_format="pandas",
        fn_kwargs={"columns": spec.input.columns, "defaults": spec.defaults, "job_seed": spec.seed},
    )


def retried_rows(spec: JobSpec, error_tables: ray.data.Dataset) -> ray.data.Dataset:
    """Return error records (``_errors/*.parquet``) as canonical rows to process again."""
    def to_input(batch):
        return batch.drop(columns=[c for c in batch.columns if c in OUTPUT_COLUMNS])

    return error_tables.map_batches(to_input, batch_format="pandas").map_batches(
        prepare_rows,
        batch_format="pandas",
        fn_kwargs={"columns": ColumnMap(), "defaults": spec.defaults, "job_seed": spec.seed},
    )


def process_rows(
    spec: JobSpec, ds: ray.data.Dataset, *, done_ids: ray.data.Dataset | None = None
) -> ray.data.Dataset:
    """Return the lazy dataset of finished rows, in blocks of exactly one shard.

    Args:
        ds: canonical rows (:func:`prepared_rows` or :func:`retried_rows`).
        done_ids: ids already committed (resume); those rows are dropped by a
            distributed anti-join before any model runs.
    """
    options = spec.storage_options
    if done_ids is not None:
        # One hash partition per ~16 committed shards keeps each partition's id set small.
        partitions = max(1, min(64, len(done_ids.input_files()) // 16 + 1))
        ds = ds.join(done_ids, join_type="left_anti", num_partitions=partitions, on=("id",))
    stage_args = {"model": spec.model, "storage_options": options}
    ds = ds.map_batches(
        EncodeStage,
        fn_constructor_kwargs={**stage_args, "stage": spec.stages.encode},
        **pool_options(spec.stages.encode),
    )
    ds = ds.map_batches(
        GenerateStage,
        fn_constructor_kwargs={**stage_args, "stage": spec.stages.generate},
        **pool_options(spec.stages.generate),
    )
    if spec.style is not None:
        from actors.style import StyleStage

        ds = ds.map_batches(
            StyleStage,
            fn_constructor_kwargs={"style": spec.style, "stage": spec.stages.style, "storage_options": options},
            **pool_options(spec.stages.style),
        )
    if spec.score is not None:
        from actors.score import ScoreStage

        ds = ds.map_batches(
            ScoreStage,
            fn_constructor_kwargs={"score": spec.score, "stage": spec.stages.score, "storage_options": options},
            **pool_options(spec.stages.score),
        )
    ds = ds.map_batches(
        encode_images,
        fn_kwargs={"image_format": spec.output.image_format, "quality": spec.output.image_quality},
        batch_size=min(64, spec.output.samples_per_shard),
    )
    return ds.repartition(target_num_rows_per_block=spec.output.samples_per_shard, strict=True)


def build_dataset(
    spec: JobSpec, *, listing: tuple | None = None, done_ids: ray.data.Dataset | None = None
) -> ray.data.Dataset:
    """Return the whole lazy plan of a job: its input rows through every stage, in shard blocks."""
    return process_rows(spec, prepared_rows(spec, listing=listing), done_ids=done_ids)
