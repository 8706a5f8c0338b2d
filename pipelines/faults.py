"""Fault injection for tests: inert unless ``PIXELMILL_FAULTS`` is set.

The variable holds a JSON list of rules; the runner forwards it to Ray
workers.  Code calls :func:`inject` at named points; a rule fires when its
``at`` matches the point and its filters match the call::

    PIXELMILL_FAULTS='[{"at": "stage:generate", "do": "exit", "nth": 2, "once": "/tmp/flag"}]'

Rule keys:
    at: the point: ``stage:<encode|generate|style>`` (each batch a stage
        computes), ``sink:before_publish``, ``sink:after_publish`` (tar and
        Parquet visible, stats not yet), ``sink:after_commit``,
        ``generate:micro_batch`` (before each forward-pass size ``micro_batch_size:
        auto`` tries; its ``rows`` is that micro-batch).
    do: ``exit`` (SIGKILL this process), ``kill_driver`` (SIGKILL the process
        whose pid is in ``PIXELMILL_DRIVER_PID``, then this one, so nothing
        after the point runs), ``raise`` (RuntimeError),
        ``cuda_error`` (the RuntimeError of an illegal CUDA memory access),
        ``oom`` (the RuntimeError of a CUDA out-of-memory error),
        ``hang`` (sleep for an hour).
    nth: fire on the n-th matching call (default: every call), counted in
        this process, or across processes when ``count_dir`` is given.
    count_dir: a folder in which every matching call claims the next free
        ordinal (an atomic file creation), so ``nth`` counts across processes.
    shard: fire only for this shard number (sink points).
    prompt: fire only when a prompt of the batch contains this text.
    rows_above: fire only when the call's ``rows`` is larger than this.
    once: a file path; the rule fires only if it can create this file, so it
        fires once across processes and restarts.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from functools import cache
from typing import Any

__all__ = ["ENV_VAR", "inject", "InjectedFault"]

ENV_VAR = "PIXELMILL_FAULTS"
DRIVER_PID_VAR = "PIXELMILL_DRIVER_PID"
_calls: Counter[int] = Counter()


class InjectedFault(RuntimeError):
    """The error a ``raise`` rule throws."""


@cache
def _rules() -> tuple[dict[str, Any], ...]:
    text = os.environ.get(ENV_VAR)
    return tuple(json.loads(text)) if text else ()


def inject(point: str, *, shard: int | None = None, prompts: list[str] | None = None, rows: int = 0) -> None:
    """Apply the rules that match this call (no-op without ``PIXELMILL_FAULTS``).

    Raises:
        InjectedFault, RuntimeError: what a matching ``raise``, ``cuda_error`` or ``oom`` rule throws.
    """
    for number, rule in enumerate(_rules()):
        if rule["at"] != point:
            continue
        if "shard" in rule and rule["shard"] != shard:
            continue
        if "prompt" in rule and not any(rule["prompt"] in p for p in prompts or []):
            continue
        if "rows_above" in rule and rows <= rule["rows_above"]:
            continue
        _calls[number] += 1
        ordinal = _claim_ordinal(rule["count_dir"]) if "count_dir" in rule else _calls[number]
        if "nth" in rule and ordinal != rule["nth"]:
            continue
        if "once" in rule and not _claim(rule["once"]):
            continue
        _fire(rule["do"], point)


def _claim_ordinal(folder: str) -> int:
    os.makedirs(folder, exist_ok=True)
    ordinal = 1
    while not _claim(os.path.join(folder, str(ordinal))):
        ordinal += 1
    return ordinal


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _fire(action: str, point: str) -> None:
    if action == "exit":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "kill_driver":
        os.kill(int(os.environ[DRIVER_PID_VAR]), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise InjectedFault(f"injected fault at {point}")
    elif action == "cuda_error":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    elif action == "oom":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    elif action == "hang":
        time.sleep(3600)
    else:
        raise ValueError(f"{ENV_VAR}: unknown action {action!r}")
