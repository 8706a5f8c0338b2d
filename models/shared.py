"""What the halves of every generate backend share: weights dtypes by name, the row checks of
a generated batch, and the fast-path report of a half that takes none.

A leaf of ``models``: ``diffusion``, ``gan`` and ``texttower`` import it, it imports no
other ``models`` module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["DTYPES", "torch_dtype", "NON_FINITE", "SAFETY_FLAGGED", "BLANK", "row_problems", "no_fast_paths"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_dtype(name: str) -> torch.dtype:
    """Map a dtype name to torch; raise a ValueError listing the accepted names."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


# Reasons recorded in ``generate_checked``'s problems, by check.
NON_FINITE = ("error", "non-finite image (NaN/inf) even after float32 decode")
SAFETY_FLAGGED = ("filtered", "safety checker flagged the image")
BLANK = ("error", "blank image: every pixel is black")


def row_problems(
    images: np.ndarray, *, non_finite: np.ndarray, flagged: np.ndarray | None = None
) -> dict[int, tuple[str, str]]:
    """The rows of a checked batch that are not ok: ``{row: (status, reason)}``, first check that applies.

    Args:
        images: uint8 ``[B, H, W, 3]`` as returned (non-finite values already made 0).
        non_finite: per row, whether the image had NaN/inf (after any retry).
        flagged: per row, whether a safety checker flagged it; None: no checker.

    Used by every image backend's ``generate_checked`` (``models.diffusion``, ``models.gan``).
    """
    blank = np.asarray(~images.any(axis=(1, 2, 3)))
    problems: dict[int, tuple[str, str]] = {}
    for row in range(len(images)):
        if non_finite[row]:
            problems[row] = NON_FINITE
        elif flagged is not None and flagged[row]:
            problems[row] = SAFETY_FLAGGED
        elif blank[row]:
            problems[row] = BLANK
    return problems


def no_fast_paths(device: str | torch.device, dtype: torch.dtype, fast_paths: Any, reason: str) -> dict[str, Any]:
    """``models.fastpaths.apply_fast_paths``'s report for a half none applies to (no attention
    processors, no VAE, tiny convolutions): every fast path asked for is skipped for ``reason``."""
    names = ("tiny_vae", "sdpa", "channels_last", "compile")
    wanted = [name for name in names if fast_paths is not None and getattr(fast_paths, name)]
    return {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "tiny_vae": None, "sdpa": [],
        "channels_last": [], "compile": [], "compile_mode": None, "pinned_transfer": False,
        "skipped": {name: reason for name in wanted},
    }
