"""Resume: what a run finds at its output, what it removes, and which rows it skips.

A shard is committed exactly when its stats file exists (``pipelines.layout``). At
start a run removes what dead runs left (``_tmp/`` and files of shards that never
committed), applies the output mode, and reads the ids of the committed rows with Ray
Data so the plan can anti-join them away before any model runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pipelines.layout import OutputLayout

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "MODES", "Mode", "OutputPlan", "check_mode", "clean_output", "done_after", "done_ids", "foreign_files",
    "prepare_output",
]

Mode = Literal["resume", "overwrite", "append"]
MODES: tuple[str, ...] = ("resume", "overwrite", "append")
logger = logging.getLogger(__name__)


@dataclass
class OutputPlan:
    """What a run finds at its output: where numbering continues and what is already done."""

    shard_offset: int
    done_parquet: list[str]
    skipped: int


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


def clean_output(layout: OutputLayout) -> list[int]:
    """Remove what dead runs left (temporaries, shard files without stats); return committed shards."""
    layout.remove_tmp()
    for path in layout.uncommitted_files():
        logger.info("pixelmill: removing %s (its shard never committed)", path)
        layout.fs.rm(path)
    return layout.committed_shards()


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
        foreign = set(foreign_files(layout))
        for path in layout.fs.find(layout.root) if layout.exists() else []:
            if path not in foreign:
                layout.fs.rm(path)
        layout.remove_tmp()
        return OutputPlan(shard_offset=0, done_parquet=[], skipped=0)
    if layout.fs.exists(layout.retry_manifest):
        # Its new shards may hold rows whose old error records are still in place: counting or
        # skipping now would count those ids twice.
        raise RuntimeError(
            f"a retry-errors run at {layout.uri} did not finish: run `pixelmill retry-errors {layout.uri}` "
            "to finish it first (or --mode overwrite)"
        )
    committed = clean_output(layout)
    offset = max(committed) + 1 if committed else 0
    if mode == "append" or not committed:
        return OutputPlan(shard_offset=offset, done_parquet=[], skipped=0)
    return done_after(layout, committed, offset)


def done_after(layout: OutputLayout, shards: list[int], offset: int) -> OutputPlan:
    """Return a plan that skips the rows of ``shards`` and numbers new shards from ``offset``."""
    skipped = sum(layout.read_stats(shard)["count"] for shard in shards)
    parquet = [layout.shard_file("parquet", shard) for shard in shards]
    return OutputPlan(shard_offset=offset, done_parquet=parquet, skipped=skipped)


def done_ids(layout: OutputLayout, paths: list[str]) -> ray.data.Dataset | None:
    """Return a dataset of the ids already committed, read by Ray, never gathered on the driver."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    if not paths:
        return None
    return ray.data.read_parquet(paths, columns=["id"], filesystem=PyFileSystem(FSSpecHandler(layout.fs)))
