"""The run's one progress display: rows done of total, images/s, errors so far, ETA.

The driver learns the total from Ray's counting passes, which run while the pools start
(``pipelines.runner.execute_counting``; ``?`` until they answer), and what is done from the
committed shards' stats files as they land (``OutputLayout.read_stats``), so the display counts
exactly what the output holds. In a terminal it is a ``tqdm`` bar on stderr; otherwise (a
scheduler's log) it is one line per interval through ``logging``::

    pixelmill: 120/1000 rows, 3.2 images/s, 2 errors, ETA 4m30s

Ray Data's own per-operator bars (and, without a terminal, its multi-line log block every
10 s) are off unless ``ray.progress_bars`` is set (``--ray-progress``): :func:`configure_ray_progress`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

__all__ = [
    "LOG_INTERVAL_S", "Counts", "RunProgress", "configure_ray_progress", "format_eta", "progress_line",
    "shard_counts",
]

logger = logging.getLogger(__name__)
# Seconds between two log lines when stderr is not a terminal; a run's last line is always logged.
LOG_INTERVAL_S = 30.0
# Seconds between two polls of the committed shards (a listing; cheap next to a shard's work).
POLL_INTERVAL_S = 2.0


# Ray Data's loggers for its progress display and its start-of-execution lines (plan, log folder),
# with the level each gets while Ray's display is off.
_RAY_PROGRESS_LOGGERS = {
    "ray.data._internal.progress": logging.ERROR,
    "ray.data._internal.execution.streaming_executor": logging.WARNING,
}


def configure_ray_progress(context: Any, *, enabled: bool) -> None:
    """Turn Ray Data's own progress bars and per-execution info lines on or off on this driver.

    Off, pixelmill's display is the only one; Ray Data's warnings and errors still show (its
    one-time "progress bars disabled" notice is the only warning of its progress logger).
    """
    context.enable_progress_bars = enabled
    context.enable_operator_progress_bars = enabled
    for name, quiet in _RAY_PROGRESS_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if enabled else quiet)


@dataclass(frozen=True)
class Counts:
    """What the committed shards of this run hold: rows done (any status), images, errors."""

    rows: int = 0
    images: int = 0
    errors: int = 0


def format_eta(seconds: float | None) -> str:
    """Return ``seconds`` as ``1h02m``, ``4m30s`` or ``12s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(counts: Counts, *, total: int | None, elapsed_s: float) -> str:
    """Return the one-line progress report: ``pixelmill: 120/1000 rows, 3.2 images/s, 2 errors, ETA 4m30s``.

    The rate is images per second of this run; the ETA assumes the remaining rows go at this
    run's rows-per-second so far (unknown, ``?``, before the first shard commits or while the
    total is not counted yet: ``total`` None, shown as ``?``).
    """
    rate = counts.images / elapsed_s if elapsed_s > 0 else 0.0
    rows_per_s = counts.rows / elapsed_s if elapsed_s > 0 else 0.0
    remaining = None if total is None else max(0, total - counts.rows)
    eta = None
    if remaining is not None:
        eta = remaining / rows_per_s if rows_per_s > 0 else (0.0 if remaining == 0 else None)
    errors = "1 error" if counts.errors == 1 else f"{counts.errors} errors"
    shown = f"{rate:.1f}" if rate >= 1 or rate == 0 else f"{rate:.2g}"  # 0.02 images/s on a CPU, not 0.0
    of = "?" if total is None else total
    return f"pixelmill: {counts.rows}/{of} rows, {shown} images/s, {errors}, ETA {format_eta(eta)}"


def shard_counts(stats: dict[str, Any]) -> Counts:
    """Return a shard stats file's (``layout.read_stats``) rows, images and errors."""
    return Counts(rows=int(stats.get("count", 0)), images=int(stats.get("successes", 0)),
                  errors=int(stats.get("failures", 0)))


class RunProgress:
    """Context manager that shows a run's progress while its shards commit.

    Args:
        committed: returns the committed shard numbers (``layout.committed_shards``).
        read_stats: returns one committed shard's stats (``layout.read_stats``).
        total: the rows this run has to do (input rows minus those already done); None until
            counted (:meth:`set_total`).
        stream: where a terminal bar goes (default stderr); a non-terminal stream gets log lines.
        log_interval_s: seconds between log lines.
    """

    def __init__(
        self, committed: Callable[[], list[int]], read_stats: Callable[[int], dict[str, Any]], *, total: int | None,
        stream: TextIO | None = None, log_interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self.committed, self.read_stats, self.total = committed, read_stats, total
        self.stream = stream or sys.stderr
        self.log_interval_s = log_interval_s
        self.counts = Counts()
        self._before = set(committed())  # shards of earlier runs are not this run's progress
        self._seen: set[int] = set()
        self._start = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="pixelmill-progress", daemon=True)
        self._bar: Any = None

    def __enter__(self) -> RunProgress:
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit="row", file=self.stream, desc="pixelmill", dynamic_ncols=True)
        else:
            logger.info("%s", self.line())
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join(timeout=POLL_INTERVAL_S * 5)
        self.update()
        if self._bar is not None:
            self._bar.close()
        else:
            logger.info("%s", self.line())

    def set_total(self, total: int) -> None:
        """Set the rows this run has to do, once counted."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def line(self) -> str:
        """Return the current progress line (:func:`progress_line`)."""
        return progress_line(self.counts, total=self.total, elapsed_s=time.monotonic() - self._start)

    def update(self) -> None:
        """Add the newly committed shards' counts; move the bar. A failed poll is skipped."""
        try:
            new = [shard for shard in self.committed() if shard not in self._before | self._seen]
            added = [shard_counts(self.read_stats(shard)) for shard in new]
        except Exception as error:  # noqa: BLE001 - a display never stops a run
            logger.debug("pixelmill: progress could not read the shards: %s", error)
            return
        self._seen.update(new)
        for counts in added:
            self.counts = Counts(rows=self.counts.rows + counts.rows, images=self.counts.images + counts.images,
                                 errors=self.counts.errors + counts.errors)
        if self._bar is not None and added:
            self._bar.update(sum(counts.rows for counts in added))
            self._bar.set_postfix_str(self.line().split(" rows, ", 1)[1])

    def _poll(self) -> None:
        last_log = time.monotonic()
        while not self._done.wait(POLL_INTERVAL_S):
            self.update()
            if self._bar is None and time.monotonic() - last_log >= self.log_interval_s:
                logger.info("%s", self.line())
                last_log = time.monotonic()
