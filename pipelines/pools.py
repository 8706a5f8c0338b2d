"""Which steps each model actor pool runs: the plan's stage list, Ray-free.

``placed_stages(spec)`` is the one owner of the rule: which model stages a job has, how
``spec.placement`` fuses them into pools (encode inside the generate actors, image encoding in
the last model actor, the regenerate loop), and each pool's callable class and constructor
kwargs.  ``pipelines/plan.py`` hands each pool to ``map_batches``; ``bench/gpu_stage.py`` runs
the same steps in one process without Ray, as a GPU actor would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actors.encode import EncodeStage
from actors.generate import GenerateStage
from pipelines.images import encode_images
from pipelines.rows import attempt_seed, llm_retry_seed
from pipelines.spec import JobSpec, StageSpec

# A pool's steps: ``(stage class or function, its kwargs)`` in the order they run on a batch.
Steps = list[tuple[Callable[..., Any], dict[str, Any]]]

__all__ = ["Steps", "image_encoding_kwargs", "model_stages", "placed_stages", "prepare_kwargs"]


def prepare_kwargs(spec: JobSpec) -> dict[str, Any]:
    """Return the keyword arguments of ``pipelines.rows.prepare_rows`` for a job's input rows."""
    return {"columns": spec.input.columns, "defaults": spec.defaults, "job_seed": spec.seed,
            "images_per_prompt": spec.images_per_prompt, "templates": spec.templates()}


def model_stages(spec: JobSpec) -> list[tuple[str, type, dict[str, Any], StageSpec]]:
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


def image_encoding_kwargs(spec: JobSpec) -> dict[str, Any]:
    """Return the keyword arguments of ``pipelines.images.encode_images`` for a job's output format."""
    return {"image_format": spec.output.image_format, "quality": spec.output.image_quality}


def placed_stages(spec: JobSpec) -> list[tuple[Callable[..., Any], dict[str, Any], StageSpec]]:
    """The actor pools to run, after ``spec.placement``: each ``(class, constructor kwargs, resources)``.

    Without fusion every model stage is its own pool.  ``fuse_encode_generate`` runs the
    encode stage inside the generate pool (its resources, one ``FusedStage`` actor);
    ``encode_images: last_stage`` runs PNG/JPEG/WebP encoding inside the last model actor.
    With ``score.max_attempts > 1`` (``spec.regenerates``) generate, style and score run as one
    ``RegenerateStage`` in the generate pool (``JobSpec.pools``).
    """
    # a pool's steps: stage classes, and encode_images (a function) when it runs in the last one
    pools: list[tuple[Steps, StageSpec]] = []
    for name, stage_class, kwargs, resources in model_stages(spec):
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
    after: Steps = [(encode_images, image_encoding_kwargs(spec))] if last_stage else []
    if spec.regenerates:
        return [*_placed(pools[:-1]), regenerate_pool(spec, pools, after)]
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


def regenerate_pool(
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
