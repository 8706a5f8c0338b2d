"""A run's diversity figures: exact duplicates, near duplicates and the spread of its images.

Measured by the driver at the end of a run (``pipelines.runner.finish_run``) over the shards
this run committed, streaming their Parquet one file and one batch at a time (``ok`` rows only):

- **exact duplicates**, over all of the run's images: images whose ``sha256`` occurs more than
  once, and the number of distinct such digests (``groups``). Digests are compared by their
  first 64 bits (8 bytes per image in memory; a false match needs ~4e9 images);
- from the score stage's ``image_embedding`` (L2-normalised CLIP image embeddings), on a sample:
  **near duplicates** (pairs with cosine >= ``diversity.near_duplicate_cosine``; exact
  duplicates are among them), the **mean pairwise distance** (1 - cosine) across the sample, and
  the mean distance **within a prompt's group** of images (group: ``parent_id`` when the output
  has it, else ``id``, so groups of one image contribute nothing), averaged over the groups
  that have two or more images.

The sample is a bottom-k sample of whole groups (:class:`GroupSample`): groups ordered by the
SHA-256 of their group id (then the id), taken in that order while the images stay at most
``diversity.sample_size``. It depends only on the set of rows, not on their order or shard
layout, and holds at most ``2 * sample_size`` embeddings while it streams; the pairwise work is
``sample_size ** 2``, never rows squared. With the score stage off there are no embeddings: only
exact duplicates are measured, and ``why`` says so.

The near-duplicate pairs, most similar first, at most :data:`MAX_PAIRS`, are written to
``_diversity/<run id>.parquet`` (``id_a < id_b``, ``cosine``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.layout import OutputLayout
from pipelines.spec import DiversitySpec
from pipelines.storage import write_once

__all__ = [
    "EMBEDDING_TYPE", "GROUP_COLUMN", "MAX_PAIRS", "PAIR_SCHEMA", "GroupSample", "group_key", "measure_run",
    "pairwise_figures", "store_embeddings", "summary_lines",
]

EMBEDDING_TYPE = pa.list_(pa.float32())
# The input row an image was made from (the images_per_prompt fan-out's column; until an output
# has it, each image is its own group).
GROUP_COLUMN = schema.PARENT_ID  # the input row an image came from (``pipelines.fanout``)
MAX_PAIRS = 10_000
PAIR_SCHEMA = pa.schema([("id_a", pa.string()), ("id_b", pa.string()), ("cosine", pa.float32())])
NO_SCORE_WHY = "the score stage is off (score: null): no image embeddings, so only exact duplicates are measured"
_BATCH_ROWS = 4096
_BLOCK_ROWS = 512  # sample rows per similarity block: a [512, sample] matrix at a time


def group_key(group: str) -> tuple[int, str]:
    """Return the sort key of a group in the bottom-k sample: the first 64 bits of SHA-256 of its id, then the id."""
    return int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big"), group


@dataclass
class GroupSample:
    """A bottom-k sample of whole groups, at most ``cap`` images, fed one image at a time in any order.

    The sample is the longest run of groups, in :func:`group_key` order, whose images add up to at
    most ``cap`` (a first group larger than ``cap`` gives an empty sample). Images only ever join
    groups, so a group that falls past the cap now stays past it: it and every later group are
    dropped for good (``cutoff``), and the sample holds at most ``2 * cap`` images between prunes.

    Attributes:
        cap: the most images the sample holds.
    """

    cap: int
    groups: dict[str, list[tuple[str, np.ndarray]]] = field(default_factory=dict)
    cutoff: tuple[int, str] | None = None
    size: int = 0

    def add(self, group: str, row_id: str, embedding: np.ndarray) -> None:
        """Offer one image (its group, id and embedding) to the sample."""
        if self.cutoff is not None and group_key(group) >= self.cutoff:
            return
        # a copy: a view would keep the whole batch it came from alive
        self.groups.setdefault(group, []).append((row_id, np.array(embedding, dtype=np.float32)))
        self.size += 1
        if self.size > 2 * self.cap:
            self.prune()

    def prune(self) -> None:
        """Drop every group past the cap (see the class docstring)."""
        total = 0
        for key in sorted(group_key(group) for group in self.groups):
            total += len(self.groups[key[1]])
            if total > self.cap:
                self.cutoff = key if self.cutoff is None else min(self.cutoff, key)
                break
        if self.cutoff is not None:
            for group in [g for g in self.groups if group_key(g) >= self.cutoff]:
                self.size -= len(self.groups.pop(group))

    def rows(self) -> list[tuple[str, str, np.ndarray]]:
        """Return the sample's images as ``(group, id, embedding)``, sorted by id."""
        self.prune()
        found = [(group, row_id, emb) for group, members in self.groups.items() for row_id, emb in members]
        return sorted(found, key=lambda row: (row[1], row[0]))


def _mean_distance(embeddings: np.ndarray) -> float | None:
    """Mean of ``1 - cosine`` over all pairs of unit vectors (in O(n d)), or None for fewer than two.

    Clipped to [0, 2]: identical images give a rounding error's worth below 0.
    """
    n = len(embeddings)
    if n < 2:
        return None
    total = embeddings.sum(axis=0)
    pair_sum = (float(total @ total) - float((embeddings * embeddings).sum())) / 2
    return min(max(1.0 - pair_sum / (n * (n - 1) / 2), 0.0), 2.0)


def pairwise_figures(
    rows: list[tuple[str, str, np.ndarray]], *, threshold: float, max_pairs: int = MAX_PAIRS
) -> tuple[dict[str, Any], pa.Table]:
    """Return the near-duplicate and distance figures of a sample, and its top near-duplicate pairs.

    Args:
        rows: ``(group, id, embedding)`` sorted by id (``GroupSample.rows``).
        threshold: the cosine at or above which two images are near duplicates.
        max_pairs: the most pairs the table keeps (most similar first, then by ids).

    Returns:
        ``near_duplicates`` (``pairs``, ``images``), ``mean_distance`` and ``within_prompt_distance``
        (``mean`` and ``groups``: the groups of two or more images it averages), and the pairs as a
        :data:`PAIR_SCHEMA` table.
    """
    ids = [row_id for _, row_id, _ in rows]
    matrix = np.stack([emb for _, _, emb in rows]).astype(np.float64) if rows else np.zeros((0, 1))
    pairs, involved = 0, np.zeros(len(rows), dtype=bool)
    kept = (np.zeros(0, np.float64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    for start in range(0, len(rows), _BLOCK_ROWS):
        sims = matrix[start : start + _BLOCK_ROWS] @ matrix.T
        i, j = np.nonzero(sims >= threshold)
        i = i + start
        upper = j > i
        i, j = i[upper], j[upper]
        pairs += int(i.size)
        involved[i] = involved[j] = True
        cos = np.concatenate([kept[0], sims[i - start, j]])
        a, b = np.concatenate([kept[1], i]), np.concatenate([kept[2], j])
        top = np.lexsort((b, a, -cos))[:max_pairs]
        kept = (cos[top], a[top], b[top])
    groups: dict[str, list[int]] = {}
    for index, (group, _, _) in enumerate(rows):
        groups.setdefault(group, []).append(index)
    within = [d for members in groups.values() if (d := _mean_distance(matrix[members])) is not None]
    overall = _mean_distance(matrix)
    figures = {
        "near_duplicates": {"pairs": pairs, "images": int(involved.sum())},
        "mean_distance": None if overall is None else round(overall, 6),
        "within_prompt_distance": {
            "mean": round(float(np.mean(within)), 6) if within else None, "groups": len(within),
        },
    }
    table = pa.table(
        {"id_a": [ids[k] for k in kept[1]], "id_b": [ids[k] for k in kept[2]],
         "cosine": pa.array(kept[0], pa.float32())},
        schema=PAIR_SCHEMA,
    )
    return figures, table


def _exact_duplicates(prefixes: list[np.ndarray]) -> dict[str, int]:
    values = np.concatenate(prefixes) if prefixes else np.zeros(0, np.uint64)
    _, counts = np.unique(values, return_counts=True)
    repeated = counts[counts > 1]
    return {"images": int(repeated.sum()), "groups": int(repeated.size)}


def _digest_prefixes(digests: list[str]) -> np.ndarray:
    return np.array([int(d[:16], 16) for d in digests if d], dtype=np.uint64)


def _offer(sample: GroupSample, batch: pa.RecordBatch, ok: np.ndarray) -> int:
    """Offer a batch's ``ok`` rows that have an embedding to ``sample``; return how many there were.

    The embeddings are read as slices of the list column's values (no Python float per element).
    """
    column = batch.column(schema.IMAGE_EMBEDDING)
    has = ok & ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)
    ids = batch.column(schema.ID).to_pylist()
    names = batch.schema.names
    groups = batch.column(GROUP_COLUMN).to_pylist() if GROUP_COLUMN in names else ids
    offered = 0
    for i in np.flatnonzero(has):
        start, stop = offsets[i], offsets[i + 1]
        if stop > start:
            sample.add(str(groups[i] or ids[i]), str(ids[i]), values[start:stop])
            offered += 1
    return offered


def measure_run(layout: OutputLayout, shards: list[int], spec: DiversitySpec, *, run_id: str) -> dict[str, Any]:
    """Return the diversity figures of the ``ok`` rows in ``shards`` and write the near-duplicate pairs table.

    Returns:
        ``images``, ``exact_duplicates`` (``images``, ``groups``), ``near_duplicate_cosine``,
        ``sample`` (``images``, ``groups``, ``of``: the images with an embedding, ``rule``),
        ``near_duplicates``, ``mean_distance``, ``within_prompt_distance``, ``pairs_table`` (its
        name under the root) and ``why`` (why the embedding figures are null, else None).

    Raises:
        OSError: a shard's Parquet cannot be read.
    """
    sample = GroupSample(spec.sample_size)
    images, embedded, prefixes, with_column = 0, 0, [], False
    for shard in sorted(shards):
        with layout.fs.open(layout.shard_file("parquet", shard), "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = set(parquet.schema_arrow.names)
            columns = [c for c in (schema.STATUS, schema.ID, GROUP_COLUMN, schema.SHA256, schema.IMAGE_EMBEDDING)
                       if c in names]
            for batch in parquet.iter_batches(columns=columns, batch_size=_BATCH_ROWS):
                ok = np.asarray(batch.column(schema.STATUS).to_numpy(zero_copy_only=False) == schema.Status.OK.value)
                images += int(ok.sum())
                prefixes.append(_digest_prefixes(batch.column(schema.SHA256).filter(pa.array(ok)).to_pylist()))
                if schema.IMAGE_EMBEDDING in names:
                    with_column = True
                    embedded += _offer(sample, batch, ok)
    figures: dict[str, Any] = {
        "images": images, "exact_duplicates": _exact_duplicates(prefixes),
        "near_duplicate_cosine": spec.near_duplicate_cosine, "sample": None, "near_duplicates": None,
        "mean_distance": None, "within_prompt_distance": None, "pairs_table": None, "why": None,
    }
    if not embedded:
        figures["why"] = ("the run made no images" if not images else
                          "no image has an embedding" if with_column else NO_SCORE_WHY)
        return figures
    picked = sample.rows()
    figures["sample"] = {"images": len(picked), "groups": len({group for group, _, _ in picked}), "of": embedded,
                         "rule": f"bottom-k: whole groups by sha256 of {GROUP_COLUMN} (else id), "
                                 f"at most {spec.sample_size} images"}
    found, pairs = pairwise_figures(picked, threshold=spec.near_duplicate_cosine)
    figures.update(found)
    path = layout.diversity_table(run_id)
    layout.fs.makedirs(path.rsplit(layout.fs.sep, 1)[0], exist_ok=True)
    with write_once(layout.fs, path, staging_dir=layout.staging_dir()) as f:
        pq.write_table(pairs, f)
    figures["pairs_table"] = layout.relative(path)
    return figures


def store_embeddings(table: pa.Table) -> pa.Table:
    """Return ``table`` with ``image_embedding`` as ``list<float32>``, null on rows without an image (the sink's step).

    The score stage hands a ``[rows, dim]`` float32 array with NaN rows where it computed
    nothing; Ray Data makes that a tensor column. A table without the column is returned as is.
    """
    if schema.IMAGE_EMBEDDING not in table.column_names:
        return table
    column = table.column(schema.IMAGE_EMBEDDING)
    if column.type == EMBEDDING_TYPE:
        return table
    if pa.types.is_null(column.type):
        stored = pa.nulls(table.num_rows, EMBEDDING_TYPE)
    else:
        chunks = [chunk.to_numpy(zero_copy_only=False) for chunk in column.chunks]
        matrix = np.concatenate([np.stack(list(c)) if c.dtype == object else c for c in chunks]).astype(np.float32)
        missing = np.isnan(matrix).all(axis=1) if matrix.shape[1] else np.ones(len(matrix), dtype=bool)
        lengths = np.where(missing, 0, matrix.shape[1])
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        stored = pa.ListArray.from_arrays(offsets, pa.array(matrix[~missing].ravel(), pa.float32()),
                                          type=EMBEDDING_TYPE, mask=pa.array(missing))
    return table.set_column(table.column_names.index(schema.IMAGE_EMBEDDING), schema.IMAGE_EMBEDDING, stored)


def summary_lines(figures: dict[str, Any] | None) -> list[str]:
    """Return the lines printed after a run's summary line, or none when there are no figures."""
    if not figures:
        return []
    exact = figures["exact_duplicates"]
    lines = [f"pixelmill: diversity: {exact['images']} of {figures['images']} images are exact duplicates "
             f"({exact['groups']} distinct)"]
    if figures.get("why"):
        return [*lines, f"pixelmill: diversity: no near-duplicate or distance figures: {figures['why']}"]
    near, sample, within = figures["near_duplicates"], figures["sample"], figures["within_prompt_distance"]

    def number(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines.append(
        f"pixelmill: diversity: {near['pairs']} near-duplicate pairs (cosine >= {figures['near_duplicate_cosine']:g}, "
        f"{near['images']} images), mean distance {number(figures['mean_distance'])}, within a prompt "
        f"{number(within['mean'])} ({within['groups']} groups); sample {sample['images']} of {sample['of']} images"
    )
    return lines
