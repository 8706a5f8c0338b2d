"""Build a folder at most once per node: file lock + temp sibling + atomic rename.

Used for the built-in models (``models.builtin``).  Copies of remote files are made by
``pipelines.storage.publish_once``, the same protocol on the storage side (``models``
imports nothing from ``pipelines``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MARKER = "model_index.json"
# A folder is complete when it holds a diffusers pipeline index or a transformers model config.
MARKERS = (MARKER, "config.json")


@contextmanager
def exclusive_lock(lock_path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block.

    ``flock`` locks are per open file description, so they serialise both separate
    processes (several actors on one node) and threads that open the file separately.
    """
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_complete(folder: str) -> bool:
    """Whether ``folder`` holds a finished model: a diffusers ``model_index.json`` or a transformers ``config.json``."""
    return any(os.path.isfile(os.path.join(folder, marker)) for marker in MARKERS)


def publish_once(target: str, fill: Callable[[str], None]) -> str:
    """Return ``target``, creating it first with ``fill(tmp_dir)`` if it is not complete.

    ``fill`` writes the folder's content into an empty temporary sibling of ``target``;
    the sibling is then renamed onto ``target`` (atomic on one filesystem), so readers
    never see a half-written folder. An exclusive lock on ``target + ".lock"`` makes
    concurrent callers wait for the first one instead of doing the work again.

    Args:
        target: final folder path.
        fill: callable writing the folder content into the directory it is given.

    Returns:
        ``target``.

    Raises:
        RuntimeError: if ``fill`` finished without writing a marker file (``MARKERS``).
    """
    if is_complete(target):  # fast path: no lock once the folder exists
        return target
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    with exclusive_lock(target + ".lock"):
        if is_complete(target):  # another process finished while we waited
            return target
        tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".tmp-", dir=parent)
        try:
            fill(tmp)
            if not is_complete(tmp):
                raise RuntimeError(f"no {' or '.join(MARKERS)} was written for {target!r}")
            if os.path.isdir(target):  # leftover without a marker from a crash
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
