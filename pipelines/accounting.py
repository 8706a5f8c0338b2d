"""Row accounting: a run's totals, its equation, and the record written as ``_run.json``.

Every input row of a run ends as exactly one of: an image, an error record, a filtered
record, or a row skipped as already done, so ``images + errors + filtered + skipped ==
input_rows``. ``input_rows`` (after ``limit``) and ``skipped`` (those of them found already
done) are counted by Ray in passes of their own (``pipelines.resume.RunRows.counts``); the
other terms come from the stats of the shards the run committed. A later occurrence of an id
is an error record (``pipelines.dedupe``), so it needs no term of its own. ``deferred`` counts
the rows a spent budget left for a later run (``actors.budget``): the sink writes them nowhere
and counts them per block.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.layout import shard_name
from pipelines.utilization import merge

__all__ = ["EQUATION_TERMS", "RunSummary", "output_totals"]

# The terms that add up to ``input_rows``; a new way for a row to end (a fan-out child)
# is one more term here and one more counter field below.
EQUATION_TERMS: tuple[str, ...] = ("images", "errors", "filtered", "skipped", "deferred")
# Terms only a budgeted run has: the equation's text names them only when they are not 0.
_OPTIONAL_TERMS = frozenset({"deferred"})


@dataclass
class RunSummary:
    """Totals of one run; also written as ``_run.json`` and ``_runs/<run id>.json``.

    ``balanced`` holds when ``images + errors + filtered + skipped + deferred == input_rows``.
    """

    run_id: str
    output: str
    mode: str
    input_rows: int = 0
    # With several images per prompt (``pipelines.fanout``) ``input_rows`` counts samples: the input
    # rows they came from are ``prompts`` (None: the run did not fan out) and the job's count
    # ``images_per_prompt`` (a row's own count from ``input.columns.images_per_prompt`` overrides it).
    prompts: int | None = None
    images_per_prompt: int = 1
    variations: int = 1  # prompt variations per input row (``llm.variations``), each with its images
    rows: int = 0
    skipped: int = 0
    images: int = 0
    errors: int = 0
    filtered: int = 0
    # rows left undone because the budget was spent (``actors.budget``); a later run does them
    deferred: int = 0
    balanced: bool = False
    equation: str = ""
    errors_by_stage: dict[str, int] = field(default_factory=dict)
    errors_by_reason: dict[str, int] = field(default_factory=dict)  # by reason code (``schema.reason_code``)
    error_examples: dict[str, str] = field(default_factory=dict)  # one full message per reason code
    errors_table: str = ""
    scored: int = 0
    clip_score_mean: float | None = None
    warnings: list[str] = field(default_factory=list)
    # Duplicates and spread of this run's images (``pipelines.diversity.measure_run``); None before it ran.
    diversity: dict[str, Any] | None = None
    # Damaged shards the run found and removed (their rows were done again): shard name -> what was wrong.
    damaged_shards: dict[str, str] = field(default_factory=dict)
    # What the whole output holds after the run, each id once with its latest status (``output_totals``).
    dataset: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    images_per_s: float = 0.0
    started: str = ""
    finished: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    # what the run was made from (``pipelines.fingerprint``): the settings that change its
    # images, and its input files with sizes and versions
    settings: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    # Cost and budget (``pipelines.cost``): busy seconds by stage, summed over the run's shards; the
    # figures from them; with a budget, its limits and spend; whether the spent budget deferred rows.
    busy_s: dict[str, float] = field(default_factory=dict)
    # Generate's micro-batch per shape (``schema.shape_label``): the size that drew most of the shape's
    # rows (``micro_batch_size: auto`` picks it per actor; see ``micro_batch_rows`` for every size used).
    micro_batch: dict[str, int] = field(default_factory=dict)
    micro_batch_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] | None = None
    budget_spent: bool = False
    # Each model pool's actors: rows, busy and wait seconds, busy fraction (``pipelines.utilization.merge``).
    utilization: dict[str, Any] = field(default_factory=dict)

    def add_shards(self, shard_stats: list[dict[str, Any]]) -> None:
        """Add the counts of the shards this run committed (their stats, any order)."""
        for stats in sorted(shard_stats, key=lambda s: s["shard"]):
            self.rows += stats["count"]
            self.images += stats["successes"]
            self.errors += stats["failures"]
            self.filtered += stats.get("filtered", 0)
            for stage, seconds in (stats.get("busy_s") or {}).items():
                self.busy_s[stage] = self.busy_s.get(stage, 0.0) + seconds
            for label, sizes in (stats.get("micro_batch") or {}).items():
                rows = self.micro_batch_rows.setdefault(label, {})
                for size, count in sizes.items():
                    rows[size] = rows.get(size, 0) + count
                self.micro_batch[label] = int(min(rows, key=lambda size: (-rows[size], int(size))))
            merge(self.utilization, stats.get("utilization"))
            if stats.get("scored"):
                total = (self.clip_score_mean or 0.0) * self.scored + stats["clip_score_mean"] * stats["scored"]
                self.scored += stats["scored"]
                self.clip_score_mean = round(total / self.scored, 4)
            for reason, count in stats["failures_by_reason"].items():
                stage = reason.split(":", 1)[0]
                self.errors_by_stage[stage] = self.errors_by_stage.get(stage, 0) + count
                self.errors_by_reason[reason] = self.errors_by_reason.get(reason, 0) + count
                example = (stats.get("failure_examples") or {}).get(reason)
                if example is not None:
                    self.error_examples.setdefault(reason, example)
            self.shards.append(shard_name(stats["shard"]))

    def finish(self, *, started: dt.datetime, clock_start: float) -> None:
        """Fill in the equation, ``balanced``, the wall time and the rate."""
        self.balance()
        self.wall_s = round(time.perf_counter() - clock_start, 3)
        self.images_per_s = round(self.images / self.wall_s, 3) if self.wall_s else 0.0
        self.started = started.isoformat(timespec="seconds")
        self.finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def balance(self) -> None:
        """Fill in ``equation`` and ``balanced`` from the counts."""
        counts = {term: int(getattr(self, term)) for term in EQUATION_TERMS}
        total = sum(counts.values())
        self.balanced = total == self.input_rows
        self.equation = (
            " + ".join(f"{count} {term}" for term, count in counts.items() if count or term not in _OPTIONAL_TERMS)
            + f" = {total} {'==' if self.balanced else '!='} {self.input_rows} input rows"
        )

    @property
    def success_rate(self) -> float:
        """Images over rows that were meant to become images (filtered rows excluded)."""
        attempted = self.images + self.errors
        return self.images / attempted if attempted else 1.0

    def reason_lines(self, top: int = 5) -> list[str]:
        """Return the most frequent error reasons, each as ``N x CODE`` and one full example."""
        lines = []
        for code, count in sorted(self.errors_by_reason.items(), key=lambda item: (-item[1], item[0]))[:top]:
            lines.append(f"{count} x {code}")
            example = self.error_examples.get(code)
            if example and example != code:
                lines.append(f"    e.g. {example}")
        return lines

    def line(self) -> str:
        """Return the one-line summary printed at the end of a run."""
        fanned = "" if self.prompts is None else (
            f" (samples of {self.prompts} prompts, "
            + (f"variations {self.variations}, " if self.variations > 1 else "")
            + f"images_per_prompt {self.images_per_prompt})"
        )
        return (
            f"pixelmill: {self.input_rows} rows in{fanned}, {self.skipped} skipped as done, "
            f"{self.images} images out, {self.errors} errors, {self.filtered} filtered, "
            + (f"{self.deferred} deferred (budget spent), " if self.deferred else "")
            + f"{len(self.shards)} shards, {self.wall_s:.1f} s, {self.images_per_s:.2f} images/s -> {self.output}"
        )


def output_totals(all_stats: list[dict[str, Any]]) -> dict[str, int]:
    """Return what an output holds, from the stats of every committed shard.

    Error records retried into newer shards are moved out of their old shards
    (``pipelines.retry.supersede``), so ``rows`` counts each id once, with its latest status.

    Returns:
        ``shards``, ``rows``, ``images``, ``errors`` and ``filtered``.
    """
    def total(key: str) -> int:
        return sum(int(stats.get(key, 0)) for stats in all_stats)

    return {"shards": len(all_stats), "rows": total("count"), "images": total("successes"),
            "errors": total("failures"), "filtered": total("filtered")}
