"""Stop a run that no longer makes progress.

Ray Data can hang after many faults (an actor pool waiting on an actor that
never comes back, a lost object nobody reconstructs).  A nightly job that
hangs holds its GPUs until someone notices; one that exits can be rerun and
resumes.  The watchdog polls a progress counter (committed shards) on a
daemon thread; when the counter has not moved for ``timeout_s`` it
interrupts the main thread (``RunStalled``), and if that does not end the run
within a grace period it exits the process.
"""

from __future__ import annotations

import _thread
import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["EXIT_STALLED", "RunStalled", "Watchdog"]

EXIT_STALLED = 3
logger = logging.getLogger(__name__)


class RunStalled(RuntimeError):
    """The run made no progress for longer than the stall timeout."""


class Watchdog:
    """Context manager that raises ``RunStalled`` in the main thread when progress stops.

    Args:
        progress: returns a number that grows while the run makes progress.
        timeout_s: seconds without growth before the run is stopped; 0 disables.
        grace_s: seconds the main thread gets to stop before the process exits.
    """

    def __init__(self, progress: Callable[[], int], *, timeout_s: float, grace_s: float = 60.0) -> None:
        self.progress = progress
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pixelmill-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        if self.timeout_s > 0:
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._done.set()
        if self.fired and (kind is None or issubclass(kind, KeyboardInterrupt)):
            raise RunStalled(
                f"no shard committed for {self.timeout_s:.0f} s (ray.stall_timeout_s); "
                "the run was stopped, rerun it to resume"
            ) from error

    def _watch(self) -> None:
        interval = max(0.5, min(30.0, self.timeout_s / 10))
        last_value, last_change = self._read(), time.monotonic()
        while not self._done.wait(interval):
            value = self._read()
            if value is not None and value != last_value:
                last_value, last_change = value, time.monotonic()
            elif time.monotonic() - last_change > self.timeout_s:
                logger.error("pixelmill: watchdog: no progress for %.0f s, stopping the run", self.timeout_s)
                self.fired = True
                _thread.interrupt_main()
                if not self._done.wait(self.grace_s):
                    logger.error("pixelmill: watchdog: the run did not stop, exiting")
                    os._exit(EXIT_STALLED)
                return

    def _read(self) -> int | None:
        try:
            return self.progress()
        except Exception as error:  # noqa: BLE001 - a failed poll is not progress, nor a reason to stop
            logger.warning("pixelmill: watchdog could not read progress: %s", error)
            return None
