"""The output lease: one run at a time writes an output.

A run takes ``_lease.json`` before it cleans or writes anything and holds it until its
records are written (``pipelines.runner``, ``pipelines.retry``).  Every change to the lease is a
conditional write (``pipelines.storage``): taken with create-if-absent, renewed and taken over
with replace-if-unchanged, so two runs can never both hold it.  A daemon thread renews the
heartbeat every ``timeout_s / 4``; a lease whose heartbeat is older than ``timeout_s`` belongs
to a dead run and is taken over, and so is, at once, a lease whose holder ran on this machine
(same host name and boot id) and whose process is gone.  Heartbeats compare the holder's clock with the taker's:
hosts' clocks must agree to well within ``timeout_s``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
from types import TracebackType
from typing import Any

from pipelines.layout import OutputLayout
from pipelines.storage import WriteConflict, create_new, delete_tagged, read_tagged, replace_tagged

__all__ = ["Lease", "LeaseHeld"]

logger = logging.getLogger(__name__)
_ATTEMPTS = 5  # a lease released or taken over between our read and our write: look again


class LeaseHeld(RuntimeError):
    """Another live run holds the output's lease; nothing was done."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Lease:
    """The lease of one run on one output, renewed by a daemon thread while held.

    Args:
        layout: the output.
        run_id: the run that takes it.
        timeout_s: how old a heartbeat makes the lease stale (written into the lease, so a taker
            judges it by the holder's own promise).
    """

    def __init__(self, layout: OutputLayout, run_id: str, *, timeout_s: float) -> None:
        self.layout, self.run_id, self.timeout_s = layout, run_id, timeout_s
        self.path = layout.lease
        self.started = _now()
        self.tag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the heartbeat and release never write at once

    def _body(self) -> bytes:
        return json.dumps({
            "run_id": self.run_id, "host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "started": self.started.isoformat(), "heartbeat": _now().isoformat(), "timeout_s": self.timeout_s,
        }, indent=2).encode()

    def acquire(self) -> Lease:
        """Take the lease (a stale one is taken over) and start the heartbeat; return self.

        Raises:
            LeaseHeld: a live run holds it; the message names the run, its host and pid, since
                when, and how old its heartbeat is.
        """
        fs, staging = self.layout.fs, self.layout.staging_dir()
        holder: dict[str, Any] = {}
        for _ in range(_ATTEMPTS):
            try:
                self.tag = create_new(fs, self.path, self._body(), staging_dir=staging)
                break
            except WriteConflict:
                pass
            found = read_tagged(fs, self.path)
            if found is None:  # released between our write and our read
                continue
            holder = json.loads(found[0])
            age = (_now() - dt.datetime.fromisoformat(holder["heartbeat"])).total_seconds()
            if age < float(holder.get("timeout_s", self.timeout_s)) and not _died_here(holder):
                raise LeaseHeld(_held_message(self.layout.uri, holder, age))
            try:
                self.tag = replace_tagged(fs, self.path, self._body(), tag=found[1], staging_dir=staging)
            except WriteConflict:  # another run took it over first: look again
                continue
            logger.warning("pixelmill: took over the stale lease of run %s (heartbeat %.0f s ago)",
                           holder.get("run_id"), age)
            break
        else:
            raise LeaseHeld(f"output {self.layout.uri}: could not take the lease (last holder: {holder or 'none'})")
        self._thread = threading.Thread(target=self._beat, name="pixelmill-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            with self._lock:
                if self._stop.is_set() or self.tag is None:
                    return
                try:
                    self.tag = replace_tagged(self.layout.fs, self.path, self._body(), tag=self.tag,
                                              staging_dir=self.layout.staging_dir())
                except WriteConflict:
                    self.lost = True
                    logger.error("pixelmill: run %s lost its lease on %s (another run took it over)",
                                 self.run_id, self.layout.uri)
                    return
                except Exception as error:  # noqa: BLE001 - a failed renewal is tried again next beat
                    logger.warning("pixelmill: lease heartbeat failed: %s: %s", type(error).__name__, error)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still this run's (never raises)."""
        self._stop.set()
        with self._lock:
            if self.tag is None or self.lost:
                return
            try:
                delete_tagged(self.layout.fs, self.path, tag=self.tag)
            except Exception as error:  # noqa: BLE001 - a lease left behind goes stale after timeout_s
                logger.warning("pixelmill: could not release the lease: %s: %s", type(error).__name__, error)
            self.tag = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _boot_id() -> str | None:
    """This machine's boot id (Linux), which tells two hosts of one name, or two boots, apart."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _died_here(holder: dict[str, Any]) -> bool:
    """Whether the holder ran on this machine, in this boot, and its process is gone.

    Such a lease is stale at once (a driver killed by a scheduler, then restarted on the same
    node), instead of after ``timeout_s``. A holder on another machine is judged by its heartbeat.
    """
    pid, boot = holder.get("pid"), _boot_id()
    if holder.get("host") != socket.gethostname() or boot is None or holder.get("boot_id") != boot:
        return False
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


def _held_message(uri: str, holder: dict[str, Any], age: float) -> str:
    return (f"output {uri} is being written by run {holder.get('run_id')} ({holder.get('host')}, pid "
            f"{holder.get('pid')}) since {holder.get('started')}, heartbeat {age:.0f} s ago; one run at a time "
            f"per output: wait for it, or if it is dead its lease goes stale {holder.get('timeout_s')} s after its "
            f"last heartbeat")
