"""Several images per prompt: each input row becomes N samples ``<id>/<k>``, k = 0..N-1.

N is the job's ``images_per_prompt``, or a row's own count from the column
``input.columns.images_per_prompt`` names (``pipelines.rows`` checks it: a bad count makes
the row one input-stage error record). The rule for ids: when the job fans out
(:func:`fans_out`: ``images_per_prompt > 1``, or a per-row count column) every sample's id
is ``<id>/<k>``, even a row whose N is 1; otherwise ids stay as read. Each sample keeps the
input row's id as ``parent_id`` and its ``k`` as ``image_index`` (0 without fan-out); its seed
is ``rows.child_seed(row seed, k)`` (image 0 keeps the row's seed, so it is the image an
``images_per_prompt: 1`` run draws). Every other column is the input row's. An input-stage
error record is not fanned out: it stays one record, with the input row's id.

Prompt variations (``llm.variations: V``, jobs with an LLM stage) come first: each input row
becomes V rows ``<id>/<v>`` (v = 0..V-1, only when V > 1), variation 0 with the row's seed and
variation v > 0 with ``rows.variation_seed(row seed, v)``; then the images fan-out above runs on
each. Fan-outs compose: each appends ``/<index>`` only when it is enabled, so both give
``<id>/<variation>/<image>``. With ``llm`` set every sample also carries its variation
(``schema.VARIATION_COLUMN``) and the seed of its LLM text (``schema.LLM_SEED_COLUMN``: the
variation's seed, so all images of a variation share one text and variations differ); the LLM
stage writes them as ``variation_index`` and ``llm_seed``. ``parent_id`` stays the input row's id.

Runs as a Ray Data ``map_batches`` task on pyarrow batches, after ``prepare_rows`` and
before duplicate marking and resume, so both work on sample ids. A sample's children are
adjacent in the batch, so the encode stage usually encodes their prompt once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pyarrow as pa

from pipelines import schema
from pipelines.rows import child_seed, variation_seed
from pipelines.schema import IMAGES_PER_PROMPT_COLUMN, LLM_SEED_COLUMN, VARIATION_COLUMN, Status
from pipelines.spec import JobSpec

__all__ = ["child_id", "fan_out", "fans_out", "makes_samples", "variations_of"]


def fans_out(spec: JobSpec, input_names: Iterable[str] | None = None) -> bool:
    """Return whether the job's sample ids get ``/<k>``.

    Args:
        spec: the job: ``images_per_prompt > 1`` or a mapped ``input.columns.images_per_prompt``.
        input_names: the input's columns; one named ``images_per_prompt`` is read as the
            per-row count even unmapped (as every canonical field is), so it fans out too.
    """
    column = spec.input.columns.images_per_prompt
    return (spec.images_per_prompt > 1 or column is not None
            or schema.IMAGES_PER_PROMPT in (input_names or ()))


def makes_samples(spec: JobSpec, input_names: Iterable[str] | None = None) -> bool:
    """Return whether an input row may become several samples: :func:`fans_out`, or ``llm.variations > 1``."""
    return fans_out(spec, input_names) or (variations_of(spec) or 1) > 1


def child_id(parent_id: str, image_index: int) -> str:
    """Return the id of image ``image_index`` of the row ``parent_id``: ``<parent_id>/<image_index>``."""
    return f"{parent_id}/{image_index}"


def variations_of(spec: JobSpec) -> int | None:
    """Return the job's prompt variations per input row (``llm.variations``), or None without an LLM stage."""
    return None if spec.llm is None else spec.llm.variations


def fan_out(batch: pa.Table, *, enabled: bool, variations: int | None = None) -> pa.Table:
    """Return the samples of a batch of canonical rows (``prepare_rows(..., images_per_prompt=N)``).

    Args:
        batch: canonical rows with ``IMAGES_PER_PROMPT_COLUMN``.
        enabled: :func:`fans_out` of the job; when False, the images fan-out leaves the rows as they are.
        variations: :func:`variations_of` the job: None leaves the LLM columns out; 1 adds them; more
            makes each row that many variations first.

    Returns:
        the samples, children of a row adjacent and in order of ``(v, k)``, without
        ``IMAGES_PER_PROMPT_COLUMN``.
    """
    if variations is not None:
        batch = _vary(batch, variations)
    counts = batch.column(IMAGES_PER_PROMPT_COLUMN).to_pylist()
    batch = batch.drop_columns([IMAGES_PER_PROMPT_COLUMN])
    if not enabled:
        return batch
    samples, indices, _seeds = _expand(batch, counts, child_seed, suffix=True)
    return samples.set_column(samples.schema.get_field_index(schema.IMAGE_INDEX), schema.IMAGE_INDEX,
                              pa.array(indices, pa.int64()))


def _vary(batch: pa.Table, variations: int) -> pa.Table:
    """Return each ok row as ``variations`` rows ``<id>/<v>`` (ids kept when 1), with the LLM columns added."""
    rows, indices, seeds = _expand(batch, [variations] * batch.num_rows, variation_seed, suffix=variations > 1)
    return rows.append_column(VARIATION_COLUMN, pa.array(indices, pa.int64())).append_column(
        LLM_SEED_COLUMN, pa.array(seeds, pa.int64()))


def _expand(
    batch: pa.Table, counts: list[int], seed_of: Callable[[int, int], int], *, suffix: bool
) -> tuple[pa.Table, list[int], list[int]]:
    """The one fan-out rule: ok row ``i`` becomes ``counts[i]`` adjacent rows ``n = 0..counts[i]-1``.

    Child ``n`` has id ``<id>/<n>`` (when ``suffix``, else the row's id) and seed ``seed_of(seed, n)``;
    an input-stage error record stays one record with its own id and seed.

    Returns:
        the rows (``id`` and ``seed`` replaced), each one's ``n``, and each one's seed.
    """
    take: list[int] = []
    new_ids: list[str] = []
    new_seeds: list[int] = []
    indices: list[int] = []
    rows = zip(batch.column(schema.ID).to_pylist(), batch.column(schema.SEED).to_pylist(),
               batch.column(schema.STATUS).to_pylist(), counts, strict=True)
    for row, (row_id, seed, status, count) in enumerate(rows):
        ok = status == Status.OK
        for n in range(count if ok else 1):
            take.append(row)
            new_ids.append(child_id(row_id, n) if ok and suffix else row_id)
            new_seeds.append(seed_of(seed, n) if ok else seed)
            indices.append(n)
    out = batch.take(pa.array(take, pa.int64()))
    out = out.set_column(out.schema.get_field_index(schema.ID), schema.ID, pa.array(new_ids, pa.string()))
    out = out.set_column(out.schema.get_field_index(schema.SEED), schema.SEED, pa.array(new_seeds, pa.int64()))
    return out, indices, new_seeds
