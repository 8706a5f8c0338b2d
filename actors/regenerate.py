"""The regenerate loop: draw, [style] and score a row again until its image passes, in one actor.

``score.max_attempts: K`` draws a row whose image scores below ``score.min_score`` again with
its next attempt seed (``pipelines.rows.attempt_seed``), up to K images; ``score.keep`` keeps
the first image that passes (``first_passing``) or the best of all K (``best``; ties: the
earliest).  A row still below the bar after K attempts stays ``filtered`` with its best attempt.

Why one actor (``ARCHITECTURE.md``, "Regenerate loop"; ``bench/regenerate.py`` measures it
against chained passes): the text embeddings are computed once and stay in the actor, each
later attempt runs only the rows still below the bar, and the rows never go back through
Ray's object store between attempts.  The attempt history lives only in the row this actor
returns, so a batch redone after a crash starts again at attempt 0 with the same seeds and
ends with the same images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from actors.base import Batch, healthy_rows
from actors.fused import FusedStage
from actors.score import Attempts, write_attempts
from pipelines import schema
from pipelines.schema import StageColumns, Status
from pipelines.spec import ScoreSpec

__all__ = ["RegenerateStage"]

Steps = list[tuple[Callable[..., Any], dict[str, Any]]]


class RegenerateStage:
    """Callable class for ``map_batches``: ``before`` once, ``attempt`` up to K times per row, ``after`` once.

    Each attempt runs the ``attempt`` steps (generate, style, score: :class:`actors.base.Stage`
    classes, so every attempt keeps their row isolation and error marking) on a copy of the rows
    still needing one, with the attempt's seed in ``seed``.  The row then takes EVERY column the
    chosen attempt wrote (image, status, scores, any column a stage adds), except:

    - ``seed`` stays the row seed (the image's own seed is ``attempt_seeds[chosen_attempt]``);
    - each stage's timing column ``<stage>_s`` is the row's share summed over its attempts;
    - the attempt columns (``schema.ATTEMPTS`` ...) hold the row's whole history.

    An attempt that ends without a score (an error, or the safety checker's filter) ends the
    row's loop with that attempt's result.

    Args:
        before: steps run once on the whole batch first (the fused encode stage, when fused).
        attempt: the steps of one attempt, in order; the last one scores (``ScoreStage``).
        after: steps run once on the finished rows (image encoding, when in the last actor).
        score: ``max_attempts`` and ``keep``.
        seed_of: ``(row seed, attempt) -> attempt seed``: ``pipelines.rows.attempt_seed``, passed in
            by the plan (the rule lives with the row seeds, in a layer actors do not import).
    """

    def __init__(
        self, *, before: Steps, attempt: Steps, after: Steps, score: ScoreSpec, seed_of: Callable[[int, int], int]
    ) -> None:
        self.before, self.attempt, self.after = (FusedStage(steps=s) for s in (before, attempt, after))
        self.seed_of = seed_of
        self.max_attempts = score.max_attempts
        self.keep = score.keep

    @property
    def contracts(self) -> list[StageColumns]:
        """The contracts of the stages this actor runs, in order."""
        return [*self.before.contracts, *self.attempt.contracts, *self.after.contracts]

    def __call__(self, batch: Batch) -> Batch:
        batch = self.before(batch)
        size = len(batch[schema.STATUS])
        # Attempt 0 runs every row (unhealthy ones get the stages' placeholders): its result is the template.
        history: dict[int, Attempts] = {i: ([], [], -1) for i in healthy_rows(batch)}
        best: dict[int, tuple[float, int, int]] = {}  # row -> (score, attempt, position in that attempt's result)
        results: list[tuple[list[int], Batch]] = []
        todo = list(range(size))
        for attempt in range(self.max_attempts):
            if not todo:
                break
            result = self.attempt(self._subset(batch, todo, attempt))
            results.append((todo, result))
            todo = [i for j, i in enumerate(todo) if i in history and self._again(i, j, attempt, result, history, best)]
        out = results[0][1]
        _copy_chosen(out, results, best)
        out[schema.SEED] = batch[schema.SEED]
        for contract in self.attempt.contracts:
            out[contract.seconds] = _summed(contract.seconds, results, size)
        write_attempts(out, {i: (seeds, scores, best[i][1]) for i, (seeds, scores, _) in history.items()})
        return self.after(out)

    def _subset(self, batch: Batch, rows: list[int], attempt: int) -> Batch:
        """Return a copy of ``rows`` of ``batch`` with each row's seed for ``attempt``."""
        index = np.asarray(rows, dtype=np.int64)
        sub = {name: column[index] for name, column in batch.items()}
        sub[schema.SEED] = np.array([self.seed_of(int(s), attempt) for s in sub[schema.SEED]], dtype=np.int64)
        return sub

    def _again(
        self, row: int, j: int, attempt: int, result: Batch, history: dict[int, Attempts],
        best: dict[int, tuple[float, int, int]],
    ) -> bool:
        """Record attempt ``attempt`` of ``row`` (at ``j`` in ``result``); return whether it draws again."""
        score = float(result[schema.CLIP_SCORE][j])
        seeds, scores, _ = history[row]
        seeds.append(int(result[schema.SEED][j]))
        scores.append(score)
        if math.isnan(score):  # no score: an error or the safety filter ends the row with this attempt
            best[row] = (math.inf, attempt, j)
            return False
        if row not in best or score > best[row][0]:  # strictly greater: ties keep the earliest
            best[row] = (score, attempt, j)
        passed = result[schema.STATUS][j] == Status.OK
        if passed and self.keep == "first_passing":
            return False
        return attempt + 1 < self.max_attempts


def _copy_chosen(out: Batch, results: list[tuple[list[int], Batch]], best: dict[int, tuple[float, int, int]]) -> None:
    """Put the chosen attempt's value of every column into each row of ``out`` (attempt 0's result), in place."""
    for row, (_, attempt, j) in best.items():
        if attempt == 0:
            continue
        chosen = results[attempt][1]
        for name, column in chosen.items():
            if out[name].dtype.kind in "US":  # fixed-width text would cut a longer value
                out[name] = out[name].astype(object)
            out[name][row] = column[j]


def _summed(name: str, results: list[tuple[list[int], Batch]], size: int) -> np.ndarray:
    """Return each row's timing column ``name`` summed over its attempts (its share of each attempt's time)."""
    total = np.zeros(size, dtype=np.float64)
    for rows, result in results:
        total[np.asarray(rows, dtype=np.int64)] += result[name]
    return total
