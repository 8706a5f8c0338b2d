"""Resume: what a run finds at its output, what it removes, and which rows it skips.

A shard is committed exactly when its stats file exists (``pipelines.layout``). At
start a run removes what dead runs left (``_tmp/`` and files of shards that never
committed) and every damaged shard (a file its stats file lists is missing or of another
size: it counts as not committed, so its rows are done again), applies the output mode,
and reads the resume keys of the committed rows (``pipelines.dedupe``: the id, and where
a duplicate record stood) with Ray Data, from the run indexes' keys files (``pipelines.history``)
and the Parquets of the shards no index covers, so :class:`RunRows` can anti-join them away
before any model runs.

``skipped`` is the number of this run's input rows (after ``limit``) found already done:
the input rows minus the rows left after the anti-join, both counted by Ray before the
model stages, so the equation balances in every mode and at every ``limit``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import pyarrow as pa

from pipelines.dedupe import KEY_COLUMNS, RESUME_KEY, RESUME_ON, mark_duplicates, with_resume_key
from pipelines.layout import LEASE, OutputLayout, ShardCheck, shard_name
from pipelines.schema import ID, IMAGE_INDEX, SHARD, SOURCE_COLUMNS, STAGE, VARIATION_COLUMN

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "MODES", "Mode", "OutputPlan", "RunRows", "check_mode", "clean_output", "damage_by_name", "done_after", "done_keys",
    "foreign_files", "prepare_output",
]

Mode = Literal["resume", "overwrite", "append"]
MODES: tuple[str, ...] = ("resume", "overwrite", "append")
logger = logging.getLogger(__name__)


@dataclass
class OutputPlan:
    """What a run finds at its output: where numbering continues and the Parquets of what is done."""

    shard_offset: int
    done_parquet: list[str]  # the Parquets of done shards no run index covers
    damaged: dict[str, str] = field(default_factory=dict)  # shard name -> what was wrong (removed, redone)
    done_keys: dict[str, list[int]] = field(default_factory=dict)  # a run's keys file -> the done shards it covers

    @property
    def done_shards(self) -> int:
        """The number of committed shards whose rows this run skips."""
        return len(self.done_parquet) + sum(len(shards) for shards in self.done_keys.values())


def foreign_files(layout: OutputLayout) -> list[str]:
    """Return the files under the output that pixelmill did not write (``OutputLayout.is_owned``),
    sorted. A dataset card counts as pixelmill's only when it carries ``card.MARKER``."""
    from pipelines.card import MARKER
    from pipelines.layout import DATASET_CARD

    if not layout.exists():
        return []
    card = layout.path(DATASET_CARD)
    foreign = []
    for path in layout.fs.find(layout.root):
        if layout.is_owned(path):
            continue
        if path == card and MARKER in layout.fs.cat_file(path)[:4096].decode("utf-8", "replace"):
            continue
        foreign.append(path)
    return sorted(foreign)


def check_mode(layout: OutputLayout, mode: Mode, *, force: bool = False) -> None:
    """Refuse an overwrite of an output that holds files pixelmill did not write, unless ``force``.

    Raises:
        FileExistsError: names up to five of those files and says what to do.
    """
    if mode != "overwrite" or force:
        return
    foreign = foreign_files(layout)
    if foreign:
        shown = ", ".join(path[len(layout.root):].lstrip(layout.fs.sep) for path in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise FileExistsError(
            f"--mode overwrite: {layout.uri} holds {len(foreign)} file(s) pixelmill did not write ({shown}{more}); "
            "pick an empty output, or pass --force to overwrite pixelmill's files and leave those in place"
        )


def clean_output(layout: OutputLayout) -> ShardCheck:
    """Remove what dead runs left and every damaged shard.

    Returns:
        the output's check (``OutputLayout.check_shards``): the whole committed shards and
        their stats, what was wrong with each damaged shard removed, the run index of each.
    """
    layout.remove_tmp()
    check = layout.check_shards()
    for shard, damage in check.damaged.items():
        logger.warning("pixelmill: shard %s is damaged (%s): removing it, its rows are done again",
                       shard_name(shard), damage)
        layout.remove_shard(shard)
    for path in check.uncommitted:  # from the same listing: removing a damaged shard leaves no new leftover
        logger.info("pixelmill: removing %s (its shard never committed)", path)
        layout.fs.rm(path)
    return check


def damage_by_name(check: ShardCheck) -> dict[str, str]:
    """Return what was wrong with each damaged shard of ``check``, by shard name (``_run.json``'s form)."""
    return {shard_name(shard): damage for shard, damage in check.damaged.items()}


def prepare_output(layout: OutputLayout, mode: Mode) -> OutputPlan:
    """Clean what dead runs left, apply the mode, and say what this run must skip.

    Only shards with a stats file are committed; the rows of anything else
    are simply done again.

    Raises:
        RuntimeError: a ``retry-errors`` run did not finish (``_retry.json``; resume and append).
    """
    layout.fs.makedirs(layout.root, exist_ok=True)
    if mode == "overwrite":
        # Only what pixelmill wrote there: never a file it did not write (check_mode refused
        # those before any work unless --force). An object store has no empty folders: a
        # prefix nothing was written to does not exist.
        keep = set(foreign_files(layout)) | {layout.path(LEASE)}  # the lease is this run's own
        for path in layout.fs.find(layout.root) if layout.exists() else []:
            if path not in keep:
                layout.fs.rm(path)
        layout.remove_tmp()
        return OutputPlan(shard_offset=0, done_parquet=[])
    if layout.fs.exists(layout.retry_manifest):
        # Its new shards may hold rows whose old error records are still in place: counting or
        # skipping now would count those ids twice.
        raise RuntimeError(
            f"a retry-errors run at {layout.uri} did not finish: run `pixelmill retry-errors {layout.uri}` "
            "to finish it first (or --mode overwrite)"
        )
    check = clean_output(layout)
    committed, damaged = check.whole, damage_by_name(check)
    offset = max(committed) + 1 if committed else 0
    if mode == "append" or not committed:  # append skips nothing: no keys are read
        return OutputPlan(shard_offset=offset, done_parquet=[], damaged=damaged)
    plan = done_after(layout, committed, offset, covered=check.covered)
    plan.damaged = damaged
    return plan


def done_after(layout: OutputLayout, shards: list[int], offset: int, *,
               covered: dict[int, str] | None = None) -> OutputPlan:
    """Return a plan that skips the rows of ``shards`` and numbers new shards from ``offset``.

    Args:
        covered: the run index that vouches for each shard (``ShardCheck.covered``): those
            shards' keys are read from that run's keys file, the others' from their Parquet.
    """
    covered = covered or {}
    plan = OutputPlan(shard_offset=offset, done_parquet=[])
    for shard in shards:
        if shard in covered:
            plan.done_keys.setdefault(layout.run_keys(covered[shard]), []).append(shard)
        else:
            plan.done_parquet.append(layout.shard_file("parquet", shard))
    return plan


def done_keys(layout: OutputLayout, plan: OutputPlan) -> ray.data.Dataset | None:
    """Return the resume keys of the rows of ``plan``'s done shards, read by Ray, never gathered on the driver.

    A keys file may hold shards its run's index no longer vouches for (rewritten, removed,
    or numbered again): only the rows of the shards ``plan.done_keys`` names are kept.

    Returns:
        a dataset of :data:`pipelines.dedupe.RESUME_ON` columns, or None when nothing is done.
    """
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    filesystem = PyFileSystem(FSSpecHandler(layout.fs))
    parts = []
    if plan.done_parquet:
        committed = ray.data.read_parquet(plan.done_parquet, columns=[ID, STAGE, *SOURCE_COLUMNS],
                                          filesystem=filesystem)
        parts.append(committed.map_batches(lambda batch: with_resume_key(batch).select(list(RESUME_ON)),
                                           batch_format="pyarrow"))
    if plan.done_keys:
        keep = {path.rsplit(layout.fs.sep, 1)[-1]: shards for path, shards in plan.done_keys.items()}
        indexed = ray.data.read_parquet(list(plan.done_keys), columns=[*RESUME_ON, SHARD], include_paths=True,
                                        filesystem=filesystem)
        parts.append(indexed.map_batches(lambda batch: _kept_keys(batch, keep), batch_format="pyarrow"))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def _kept_keys(batch: pa.Table, keep: dict[str, list[int]]) -> pa.Table:
    """Return the resume keys of ``batch`` (rows of keys files) whose shard its file's entry in ``keep`` names."""
    import pyarrow.compute as pc

    mask = pa.array([False] * batch.num_rows, pa.bool_())
    for path in pc.unique(batch["path"]).to_pylist():
        in_file = pc.equal(batch["path"], path)
        kept = pc.is_in(batch[SHARD], value_set=pa.array(keep.get(path.rsplit("/", 1)[-1], []), pa.int64()))
        mask = pc.or_(mask, pc.and_(in_file, kept))
    return batch.filter(mask).select(list(RESUME_ON))


@dataclass
class RunRows:
    """A run's input rows and what it finds done: the rows to process and how many it skips.

    Attributes:
        rows: this run's canonical input rows (after ``limit``).
        firsts: ``pipelines.dedupe.first_occurrences`` of ``rows`` (None: no id repeats).
        done: :func:`done_keys` of the committed rows a resume skips (None: nothing to skip).
        done_shards: how many committed shards ``done`` holds the keys of.
    """

    rows: ray.data.Dataset
    firsts: ray.data.Dataset | None
    done: ray.data.Dataset | None
    done_shards: int = 0

    @property
    def partitions(self) -> int:
        """Hash partitions of the anti-join: one per ~16 committed shards keeps each partition's key set small."""
        return max(1, min(64, self.done_shards // 16 + 1)) if self.done is not None else 1

    def todo(self, columns: tuple[str, ...] | None = None) -> ray.data.Dataset:
        """Return the rows to process (duplicates marked, done rows dropped), lazily; ``columns`` narrows them."""
        rows = self.rows if columns is None else self.rows.select_columns(list(columns))
        rows = mark_duplicates(rows, self.firsts)
        if self.done is None:
            return rows
        keyed = rows.map_batches(with_resume_key, batch_format="pyarrow")
        left = keyed.join(self.done, join_type="left_anti", num_partitions=self.partitions,
                           on=cast(Any, RESUME_ON))  # Ray's hint says tuple[str]; any key tuple works
        return left.drop_columns([RESUME_KEY])

    def prompts(self) -> int:
        """Return the input rows that ``rows`` are samples of (``pipelines.fanout``), counted by Ray.

        Each input row has exactly one row with ``image_index`` 0 and variation 0 (its first
        image, or its one error record).
        """
        import pyarrow.compute as pc

        def first(batch: pa.Table) -> pa.Table:
            keep = pc.equal(batch[IMAGE_INDEX], 0)
            if VARIATION_COLUMN in batch.column_names:  # prompt variations (``llm.variations``)
                keep = pc.and_(keep, pc.equal(batch[VARIATION_COLUMN], 0))
            return batch.select([IMAGE_INDEX]).filter(keep)

        return self.rows.map_batches(first, batch_format="pyarrow").count()

    def counts(self) -> tuple[int, int]:
        """Return ``(input_rows, skipped)``: both counted by Ray, with no model stage in their plans."""
        input_rows = self.rows.count()
        if self.done is None:
            return input_rows, 0
        return input_rows, input_rows - self.todo(KEY_COLUMNS).count()
