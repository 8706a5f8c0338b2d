"""The job spec: one YAML file validated into one frozen pydantic object.

Every component receives the part of the spec it needs (``spec.input``,
``spec.stages.generate``, ...), never the raw dict.  This module must stay
light: ``pixelmill validate`` imports it without torch or Ray.
"""

from __future__ import annotations

import datetime
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipelines import prompt_template as templating
from pipelines.grid import GRID_SOURCE, check_grid
from pipelines.schema import INPUT_ERROR_COLUMN, RESERVED_COLUMNS

__all__ = [
    "JobSpec",
    "SpecError",
    "load_spec",
    "apply_overrides",
]


class SpecError(ValueError):
    """A job spec that cannot run; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]


class ColumnMap(_Strict):
    """Names of the input columns pixelmill reads; ``None`` means absent."""

    prompt: str = "prompt"
    id: str | None = None
    negative_prompt: str | None = None
    seed: str | None = None
    width: str | None = None
    height: str | None = None
    steps: str | None = None
    guidance: str | None = None
    # A column that sets a row's own images_per_prompt (else the job's ``images_per_prompt``).
    images_per_prompt: str | None = None

    def overrides(self) -> dict[str, str]:
        """Return ``{canonical name: input column}`` for every mapped column."""
        return {key: value for key, value in self.model_dump().items() if value is not None}


class InputSpec(_Strict):
    """Where the prompt table lives: a file, a folder/prefix or a glob, any fsspec URI; or a ``grid``.

    ``grid`` (``pipelines.grid``) is the table of every combination of its columns' values, with
    ids built from the values; exactly one of ``uri`` and ``grid`` is set.
    """

    uri: Annotated[str, Field(min_length=1)] | None = None
    grid: dict[str, list[StrictStr | StrictInt | StrictFloat | StrictBool]] | None = None
    format: Literal["auto", "parquet", "jsonl", "csv"] = "auto"
    columns: ColumnMap = ColumnMap()

    @model_validator(mode="after")
    def _uri_or_grid(self) -> InputSpec:
        if (self.uri is None) == (self.grid is None):
            raise ValueError("input: set exactly one of uri (a prompt table) and grid (a product of value lists)")
        if self.grid is not None:
            if self.columns.id is not None:
                raise ValueError("input.columns.id: a grid's ids are built from its values; remove the mapping")
            if self.format != "auto":
                raise ValueError("input.format: a grid is no file; remove the key")
            # a key may be a canonical field (steps, seed, prompt, ...): read as that field, as a file's column is
            readable = set(ColumnMap.model_fields) - {"id"}
            check_grid(self.grid, reserved=frozenset({*RESERVED_COLUMNS, INPUT_ERROR_COLUMN} - readable))
        return self

    @property
    def name(self) -> str:
        """The input as messages name it: its URI, or ``input.grid``."""
        return self.uri if self.uri is not None else GRID_SOURCE


class OutputSpec(_Strict):
    """Where and how shards are written."""

    uri: str = Field(min_length=1)
    samples_per_shard: PositiveInt = 1000
    image_format: Literal["png", "jpg", "webp"] = "png"
    image_quality: Annotated[int, Field(ge=1, le=100)] = 95
    # Write report.html (contact sheet, counts, throughput, scores) next to the shards after each run.
    report: bool = True
    # One run at a time per output (pipelines.lease): a run's lease whose heartbeat is older than
    # this is stale (its run died) and the next run takes it over. Heartbeats every quarter of it.
    lease_timeout_s: Annotated[float, Field(ge=1)] = 300


class PerformanceSpec(_Strict):
    """GPU fast paths of the encode and generate stages (``model.performance``).

    Every field except ``tiny_vae`` acts on CUDA stages only and is ignored on CPU, so
    CPU runs keep their exact output bytes. On CUDA they change the bytes (another
    dtype, other kernels). ``models.fastpaths`` applies them and reports what it
    applied; the score stage's model ignores this section.
    """

    # Weights dtype of CUDA stages. auto: bfloat16 where the GPU supports it, else
    # float32. A dtype set explicitly under stages.<stage>.dtype wins over this one.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # PyTorch scaled-dot-product attention (diffusers AttnProcessor2_0), set explicitly on
    # every classic attention layer of the UNet and VAE; other processors are left alone.
    sdpa: bool = True
    # UNet and VAE weights in channels_last memory format (faster tensor-core convolutions).
    channels_last: bool = True
    # torch.compile the denoiser and the VAE decoder. Each new batch shape compiles first
    # (minutes with the max-autotune modes), so it pays off on long runs only.
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "max-autotune-no-cudagraphs"
    )
    # A diffusers AutoencoderTiny folder (local path or object-storage URI, cached like
    # model.uri) that decodes instead of the pipeline's VAE, on every device: the main
    # lever for one-step models, at some cost in detail. null keeps the pipeline's VAE.
    # Its latent channels and upsampling factor must match the pipeline's VAE.
    tiny_vae: Annotated[str, Field(min_length=1)] | None = None
    # Copy images to the host through pinned (page-locked) memory, as uint8 made on the GPU.
    pinned_transfer: bool = True

    def explicit_dtype(self, stage: StageSpec) -> str | None:
        """Return the stage's dtype when the spec sets it (it wins over ``dtype``), else None."""
        return stage.dtype if "dtype" in stage.model_fields_set else None


class ModelSpec(_Strict):
    """A diffusers pipeline folder: ``builtin:NAME``, a local path or an object-storage URI."""

    uri: str = "builtin:shapes-sd"
    cache_dir: str = "~/.cache/pixelmill/models"
    # How the encode and generate stages run the pipeline on GPUs (see PerformanceSpec).
    performance: PerformanceSpec = PerformanceSpec()

    def local_cache_dir(self) -> str:
        """Return the cache folder with ``~`` expanded (resolved on each node)."""
        return os.path.expanduser(self.cache_dir)


class GenerateSpec(_Strict):
    """Which backend draws the images (``models.backends``): ``diffusers`` (a diffusers pipeline,
    the default) or ``gan`` (a one-pass text-conditional generator, ``models.gan``, such as
    ``builtin:shapes-turbo`` or ``builtin:shapes-gan``). It ignores steps and guidance; its rows
    record ``steps=1``."""

    backend: str = "diffusers"

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        # The one backend registry; torch-free at import (the layer contract's one exception)
        from models.backends import GENERATE_BACKENDS

        if value not in GENERATE_BACKENDS:
            raise ValueError(f"unknown backend {value!r}; allowed: {', '.join(GENERATE_BACKENDS)}")
        return value


class GenerationDefaults(_Strict):
    """Job-level generation settings; per-row columns override them."""

    width: PositiveInt = 64
    height: PositiveInt = 64
    steps: PositiveInt = 2
    guidance: Annotated[float, Field(ge=0)] = 1.0
    negative_prompt: str = ""

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value


AUTO = "auto"
# ``batch_size: auto``: Ray hands the actor batches of this many rows and the micro-batch is
# searched (Ray Data needs a number of rows per batch before any actor runs).
AUTO_BATCH_SIZE = 32


class StageSpec(_Strict):
    """Resources of one stage's actor pool.

    ``micro_batch_size: auto`` (generate only) is read as ``auto_micro_batch: true`` with
    ``micro_batch_size`` set to ``batch_size``, the largest micro-batch the search tries
    (``models.autobatch``); ``batch_size: auto`` is ``batch_size: AUTO_BATCH_SIZE`` with
    ``micro_batch_size: auto``.
    """

    batch_size: PositiveInt = 8
    # Rows per forward pass.  Images are bit-identical for one micro_batch_size
    # whatever batch_size, concurrency or row order (models/batching.py).
    micro_batch_size: PositiveInt = 4
    # Search the micro-batch (``micro_batch_size`` is then its upper bound); set by ``auto``.
    auto_micro_batch: bool = False
    concurrency: PositiveInt | tuple[PositiveInt, PositiveInt] = 1
    # The actors an autoscaling pool ([min, max]) starts with; default max, so the pool is full
    # from the start (Ray Data's own default, min, grows one actor at a time while input queues).
    initial_concurrency: PositiveInt | None = None
    num_gpus: Annotated[float, Field(ge=0)] = 0.0
    # Actors hold their CPUs for the whole run; read, image-encoding and write
    # tasks need the rest, so CPU-only pools default to half a CPU each.
    num_cpus: Annotated[float, Field(gt=0)] = 0.5
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _auto_sizes(cls, data: Any) -> Any:
        """Read ``batch_size: auto`` and ``micro_batch_size: auto`` (see the class docstring)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("batch_size") == AUTO:
            if data.get("micro_batch_size", AUTO) != AUTO:
                raise ValueError("batch_size: auto searches the micro-batch; leave micro_batch_size out or set it auto")
            data["batch_size"], data["micro_batch_size"] = AUTO_BATCH_SIZE, AUTO
        if data.get("micro_batch_size") == AUTO:
            data["micro_batch_size"] = data.get("batch_size", cls.model_fields["batch_size"].default)
            data["auto_micro_batch"] = True
        return data

    @field_validator("concurrency")
    @classmethod
    def _min_le_max(cls, value: Any) -> Any:
        if isinstance(value, tuple) and value[0] > value[1]:
            raise ValueError(f"min {value[0]} is larger than max {value[1]}")
        return value

    @model_validator(mode="after")
    def _initial_in_range(self) -> StageSpec:
        low, high, initial = self.pool_sizes()
        if not low <= initial <= high:
            raise ValueError(f"initial_concurrency {initial} is outside concurrency [{low}, {high}]")
        return self

    def pool_sizes(self) -> tuple[int, int, int]:
        """Return the pool's ``(min, max, initial)`` actors: a fixed pool starts all of its actors,
        an autoscaling one ``initial_concurrency`` (default: max)."""
        low, high = self.concurrency if isinstance(self.concurrency, tuple) else (self.concurrency,) * 2
        return low, high, self.initial_concurrency or high

    def resolved_device(self) -> str:
        """Return ``cuda`` when the stage has GPUs (or asks for them), else ``cpu``."""
        if self.device == "auto":
            return "cuda" if self.num_gpus > 0 else "cpu"
        return self.device

    @model_validator(mode="after")
    def _gpu_dtype(self) -> StageSpec:
        if self.resolved_device() == "cuda" and self.num_gpus == 0:
            raise ValueError("device 'cuda' needs num_gpus > 0 so Ray places the actor on a GPU")
        return self


class Stages(_Strict):
    """Per-stage actor pools."""

    encode: StageSpec = StageSpec(batch_size=32)
    generate: StageSpec = StageSpec(batch_size=8)
    style: StageSpec = StageSpec(batch_size=8)
    score: StageSpec = StageSpec(batch_size=32)
    # The LLM prompt stage (``llm``): one row per forward pass, so a row's text never depends
    # on its batch-mates (``models.llm``).
    llm: StageSpec = StageSpec(batch_size=16, micro_batch_size=1)

    @model_validator(mode="after")
    def _auto_only_for_generate(self) -> Stages:
        for name in ("encode", "style", "score", "llm"):
            if getattr(self, name).auto_micro_batch:
                raise ValueError(
                    f"stages.{name}.micro_batch_size: auto is only for stages.generate (the one stage that "
                    f"searches its micro-batch); give stages.{name} a number"
                )
        return self


class AdaINWeights(_Strict):
    """Weight files of the AdaIN backend, in the published layout; any fsspec URI."""

    vgg: str = Field(min_length=1)
    decoder: str = Field(min_length=1)


class StyleSpec(_Strict):
    """The optional style stage: which backend, which column, and job-level defaults."""

    backend: Literal["onnx", "adain"] = "onnx"
    column: str | None = "style"
    default: str | None = None
    strength: Annotated[float, Field(ge=0, le=1)] = 1.0
    preserve_color: bool = False
    strength_column: str | None = "style_strength"
    preserve_color_column: str | None = "style_preserve_color"
    cache_size: PositiveInt = 256
    adain: AdaINWeights | None = None

    @model_validator(mode="after")
    def _adain_needs_weights(self) -> StyleSpec:
        if self.backend == "adain" and self.adain is None:
            raise ValueError("backend 'adain' needs adain.vgg and adain.decoder weight files")
        return self


DEFAULT_SCORE_MODEL = "builtin:shapes-clip"


class ScoreSpec(_Strict):
    """The score stage: CLIP score of every image against its prompt.

    ``model`` is any transformers ``CLIPModel`` folder (with tokenizer and image
    processor): ``builtin:shapes-clip`` (the default), a local path or an object-storage URI.
    Rows scoring below ``min_score`` get status ``filtered``: kept in the
    Parquet with their score, left out of the tar, counted apart from errors.
    """

    model: ModelSpec = ModelSpec(uri=DEFAULT_SCORE_MODEL)
    min_score: Annotated[float, Field(ge=0, le=100)] | None = None
    # Regenerate loop: a row whose image scores below min_score is drawn again with the next
    # attempt seed, up to max_attempts images in all (1: no loop). keep: the first image that
    # passes, or the best-scoring of all max_attempts.
    max_attempts: PositiveInt = 1
    keep: Literal["first_passing", "best"] = "first_passing"

    @model_validator(mode="after")
    def _loop_needs_a_bar(self) -> ScoreSpec:
        if self.max_attempts > 1 and self.keep == "first_passing" and self.min_score is None:
            raise ValueError("max_attempts > 1 with keep 'first_passing' needs min_score (the bar an image must pass)")
        return self

    @field_validator("model", mode="before")
    @classmethod
    def _score_model_default(cls, value: Any) -> Any:
        """``model: {cache_dir: ...}`` keeps the CLIP default, not ``ModelSpec``'s diffusion one."""
        return {"uri": DEFAULT_SCORE_MODEL, **value} if isinstance(value, dict) else value


# The most prompt variations one input row may fan out to (a typo like 1000 is refused, not run).
MAX_VARIATIONS = 100


class LlmSpec(_Strict):
    """The LLM prompt stage: a causal LM rewrites each row's prompt (``actors.llm``, ``models.llm``).

    ``instruction`` is filled with the row's prompt (``{prompt}``); the model's chat template,
    when its tokenizer has one, wraps it. ``variations: N`` makes each input row N samples
    ``<id>/<v>`` (``pipelines.fanout``), each with its own seed and so its own text. An output
    that is empty, longer than the image model's text window, or not a full match of
    ``constraint`` is drawn again with the next seed, ``retries`` times, then is an error record.
    """

    model: ModelSpec = ModelSpec(uri="builtin:shapes-lm")
    # vllm is the route for large GPU clusters (ray.data.llm); it is not built here (README).
    backend: Literal["transformers"] = "transformers"
    instruction: str = "{prompt}"
    variations: Annotated[int, Field(ge=1, le=MAX_VARIATIONS)] = 1
    # Sampling; None (the default): the model's own generation_config.json (transformers' rule), or
    # 48 new tokens, temperature 1.0, top_p 1.0, sampling when it does not set one.
    max_new_tokens: Annotated[int, Field(ge=1, le=1024)] | None = None
    temperature: Annotated[float, Field(gt=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    do_sample: bool | None = None
    constraint: Annotated[str, Field(min_length=1)] | None = None
    retries: Annotated[int, Field(ge=0, le=10)] = 1

    @field_validator("model", mode="before")
    @classmethod
    def _llm_model_default(cls, value: Any) -> Any:
        """``model: {cache_dir: ...}`` keeps the LLM default, not ``ModelSpec``'s diffusion one."""
        return {"uri": "builtin:shapes-lm", **value} if isinstance(value, dict) else value

    @field_validator("instruction")
    @classmethod
    def _has_prompt(cls, value: str) -> str:
        try:
            filled = value.format(prompt="x")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"instruction must use only the field {{prompt}} (braces doubled): {error}") from None
        if filled == value.format(prompt="y"):
            raise ValueError("instruction must contain {prompt}, where the row's prompt goes")
        return value

    @field_validator("constraint")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"constraint is not a regular expression: {error}") from None
        return value

    def sampling(self) -> dict[str, Any]:
        """Return the sampling settings the spec sets (None: the model's ``generation_config``), by name."""
        return self.model_dump(include={"max_new_tokens", "temperature", "top_p", "do_sample"})


class DiversitySpec(_Strict):
    """How the run's diversity figures are measured (``pipelines.diversity``)."""

    # Two images whose score-model image embeddings have at least this cosine similarity are near duplicates.
    near_duplicate_cosine: Annotated[float, Field(gt=0, le=1)] = 0.95
    # At most this many images (whole prompt groups, chosen by a hash of the parent id) enter the
    # pairwise figures, so they never grow as rows squared.
    sample_size: PositiveInt = 2000


class CostSpec(_Strict):
    """Prices of one reserved accelerator or CPU for an hour, for the run's cost figures."""

    gpu_hour: Annotated[float, Field(ge=0)] = 0.0
    cpu_hour: Annotated[float, Field(ge=0)] = 0.0
    currency: str = "USD"


class BudgetSpec(_Strict):
    """Stop starting new work once any of these is spent; a later run resumes the rest."""

    gpu_hours: Annotated[float, Field(gt=0)] | None = None
    cpu_hours: Annotated[float, Field(gt=0)] | None = None
    cost: Annotated[float, Field(gt=0)] | None = None


class RaySpec(_Strict):
    """How to reach Ray: ``None`` starts a local runtime."""

    address: str | None = None
    num_cpus: PositiveInt | None = None
    preserve_order: bool = True
    # Stop the run (exit code 3) when no shard commits for this long; 0 turns the watchdog off.
    stall_timeout_s: Annotated[float, Field(ge=0)] = 3600.0
    # Ray Data's own per-operator progress bars (--ray-progress); pixelmill shows its own display either way.
    progress_bars: bool = False


class PlacementSpec(_Strict):
    """Where stages run; output bytes are the same either way (``bench/placement.py`` measures them).

    ``fuse_encode_generate`` runs the text encoder inside the generate stage's actors (one pool
    with the generate stage's resources) instead of its own pool; ``encode_images`` runs
    PNG/JPEG/WebP encoding in Ray tasks after the model stages (``task``) or inside the last
    model stage's actor (``last_stage``).

    Fused is the default: ``bench.placement`` on 2 CPU cores measured it 1.25x faster than
    separate pools (one actor fewer to start and feed, no object-store hop for the prompt
    embeddings); on a GPU the text encoder is small next to the UNet and shares its device.
    """

    fuse_encode_generate: bool = True
    encode_images: Literal["task", "last_stage"] = "task"


class JobSpec(_Strict):
    """A whole pixelmill job."""

    input: InputSpec
    output: OutputSpec
    model: ModelSpec = ModelSpec()
    generate: GenerateSpec = GenerateSpec()
    defaults: GenerationDefaults = GenerationDefaults()
    stages: Stages = Stages()
    style: StyleSpec | None = None
    score: ScoreSpec | None = ScoreSpec()
    # The LLM prompt stage (issue 19): rewrites each row's prompt before the encode stage.
    llm: LlmSpec | None = None
    placement: PlacementSpec = PlacementSpec()
    ray: RaySpec = RaySpec()
    seed: int = 0
    # Images drawn from each input row (a column named in input.columns.images_per_prompt
    # overrides it per row): samples <id>/<k>, k = 0..N-1, seeds derived from the row's seed.
    images_per_prompt: PositiveInt = 1
    diversity: DiversitySpec = DiversitySpec()
    cost: CostSpec | None = None
    budget: BudgetSpec | None = None
    limit: PositiveInt | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    # Build each row's prompt / negative prompt from its columns (``pipelines.prompt_template``):
    # ``"{product} on a {background} background"``; the template wins over a prompt column.
    prompt_template: str | None = None
    negative_prompt_template: str | None = None

    def templates(self) -> tuple[templating.Template, ...]:
        """Return the job's parsed templates (prompt first), none when it has none."""
        texts = (("prompt_template", self.prompt_template), ("negative_prompt_template", self.negative_prompt_template))
        return tuple(templating.parse(text, key) for key, text in texts if text is not None)

    def template_columns(self) -> tuple[str, ...]:
        """Return the input columns the templates read (read as text, as the canonical fields are)."""
        return tuple(dict.fromkeys(name for template in self.templates() for name in template.fields))

    @field_validator("prompt_template", "negative_prompt_template")
    @classmethod
    def _template_parses(cls, text: str | None, info: ValidationInfo) -> str | None:
        if text is not None:
            templating.parse(text, str(info.field_name))
        return text

    @model_validator(mode="after")
    def _templates_read_plain_columns(self) -> JobSpec:
        # A template's column must reach a retry-errors run as read: the prompt columns hold the
        # filled text there, and a mapped column is read as its canonical field, not kept.
        own = {"prompt", "negative_prompt", *self.input.columns.overrides().values()}
        for template in self.templates():
            taken = [name for name in template.fields if name in own]
            if taken:
                raise ValueError(
                    f"{template.key}: {{{taken[0]}}} names a prompt column or a column mapped in input.columns; "
                    "a template reads other columns only (rename the column)"
                )
        return self

    @model_validator(mode="after")
    def _grid_holds_the_prompt(self) -> JobSpec:
        # A grid is the whole input, so what the templates read and where the prompt comes from
        # are known at spec load (a file's columns are checked at preflight).
        grid = self.input.grid
        if grid is None:
            return self
        for template in self.templates():
            missing = [name for name in template.fields if name not in grid]
            if missing:
                raise ValueError(
                    f"{template.key}: column {missing[0]!r} is not a key of input.grid (keys: {', '.join(grid)})"
                )
        if self.prompt_template is None and self.input.columns.prompt not in grid:
            raise ValueError(
                f"input.grid has no {self.input.columns.prompt!r} key and there is no prompt_template: set "
                "prompt_template (e.g. \"a {key} ...\" with the grid's keys) or add a grid key named prompt"
            )
        return self

    def pools(self) -> dict[str, StageSpec]:
        """The actor pools Ray starts for this job, by stage name (``pipelines.plan`` places them).

        With ``placement.fuse_encode_generate`` the encode stage has no pool: it runs in the
        generate pool's actors; with ``score.max_attempts > 1`` so do style and score (the
        regenerate loop draws, styles and scores each attempt in one actor). With ``llm`` the LLM
        prompt stage has a pool of its own, first.
        """
        pools = {"generate": self.stages.generate}
        if not self.placement.fuse_encode_generate:
            pools = {"encode": self.stages.encode, **pools}
        if self.llm is not None:
            pools = {"llm": self.stages.llm, **pools}
        if self.regenerates:
            return pools
        if self.style is not None:
            pools["style"] = self.stages.style
        if self.score is not None:
            pools["score"] = self.stages.score
        return pools

    @property
    def regenerates(self) -> bool:
        """Whether the regenerate loop runs (``score.max_attempts > 1``)."""
        return self.score is not None and self.score.max_attempts > 1

    def stage_hosts(self) -> dict[str, str]:
        """Return, for every model stage the job runs, the name of the pool (:meth:`pools`) whose actors run it.

        ``encode`` runs in the ``generate`` pool when fused; with ``score.max_attempts > 1`` the
        regenerate loop runs generate, style and score in the ``generate`` pool's actors.
        """
        pools = self.pools()
        hosts: dict[str, str] = {"llm": "llm"} if self.llm is not None else {}
        hosts.update({stage: stage if stage in pools else "generate" for stage in ("encode", "generate")})
        for stage in ("style", "score"):
            if getattr(self, stage) is not None:
                hosts[stage] = stage if stage in pools else "generate"
        return hosts

    @model_validator(mode="after")
    def _budget_cost_needs_prices(self) -> JobSpec:
        if self.budget is not None and self.budget.cost is not None and self.cost is None:
            raise ValueError("budget.cost needs cost: {gpu_hour: ..., cpu_hour: ...} to price the run")
        return self

    @model_validator(mode="after")
    def _fused_encode_has_no_pool(self) -> JobSpec:
        if not self.placement.fuse_encode_generate:
            return self
        pool_keys = ("concurrency", "initial_concurrency", "num_gpus", "num_cpus")
        default = StageSpec()
        changed = [key for key in pool_keys if getattr(self.stages.encode, key) != getattr(default, key)]
        if changed:
            raise ValueError(
                f"stages.encode sets {', '.join(changed)}, but placement.fuse_encode_generate is true: the encode "
                "stage runs inside the generate stage's actors, with their resources; remove those keys or set "
                "placement.fuse_encode_generate: false for an encode pool of its own"
            )
        return self


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {key}: {message}")
    return "invalid job spec:\n" + "\n".join(lines)


def _parse_value(text: str) -> Any:
    """Parse a ``--set`` value the way YAML would (``8`` -> 8, ``[1, 4]`` -> list).

    Text YAML cannot parse (a regular expression such as ``[0-9]+``, a template such as
    ``{colour} thing``) and a brace template YAML reads as a mapping without values
    (``{prompt}``) stay the text as typed.
    """
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, dict) and value and all(item is None for item in value.values()):
        return text
    # YAML reads 2026-11-28 as a date; nightly jobs pass dates as plain strings.
    return text if isinstance(value, (datetime.date, datetime.datetime)) else value


def apply_overrides(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` assignments to a raw spec dict and return it.

    Args:
        raw: the spec as loaded from YAML (modified in place).
        assignments: strings such as ``output.uri=s3://b/2026-11-28`` or
            ``stages.generate.batch_size=16``.
    """
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set expects dotted.key=value, got {assignment!r}")
        _set_dotted(raw, key.strip(), _parse_value(value))
    return raw


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_spec(
    path: str | Path | None = None,
    *,
    raw: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    input_uri: str | None = None,
    output_uri: str | None = None,
    limit: int | None = None,
) -> JobSpec:
    """Read, override and validate a job spec; raise :class:`SpecError` on any problem.

    Command-line flags win over ``--set`` assignments, which win over the file.
    """
    if raw is None:
        if path is None:
            raise SpecError("no job spec given")
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise SpecError(f"job spec not found: {path}") from None
        except yaml.YAMLError as error:
            raise SpecError(f"job spec {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise SpecError("a job spec must be a mapping of keys to values")
    raw = apply_overrides(raw, list(sets or []))
    flags = {"input.uri": input_uri, "output.uri": output_uri, "limit": limit}
    for key, value in flags.items():
        if value is not None:
            _set_dotted(raw, key, value)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(_format_error(error)) from None
