"""A Hugging Face hub cache that a test fills itself: ``models--org--name/snapshots/<commit>/`` plus ``refs/main``."""

from __future__ import annotations

import shutil
from pathlib import Path

from models.builtin import SHIPPED_MODELS, ZOO_DIR

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo_id: str, *, model: str = "shapes-sd", commit: str = COMMIT) -> Path:
    """Put the shipped built-in ``model`` into ``cache`` as the snapshot of ``repo_id`` at ``main``; return its folder.

    The layout is huggingface_hub's (``snapshot_download(..., local_files_only=True)`` finds it),
    with plain files where a real cache links into ``blobs/``.
    """
    assert model in SHIPPED_MODELS
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(Path(ZOO_DIR) / model, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
