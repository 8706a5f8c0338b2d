"""Fixed-shape micro-batches: the same row gives the same bits whatever batch it came in.

Batched float math is not batch-invariant: BLAS and convolution kernels pick
their blocking from the tensor shapes, so a row's result can change in the
last bit when the batch size changes (seen on CPU with the built-in model:
one uint8 off by 1 between a batch of 6 and a batch of 1).  Running every
forward pass at one fixed batch shape, padding the last chunk by repeating a
row, removes that dependence: a row's output then depends only on the
micro-batch size, not on the stage's batch size, pool size or row order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

__all__ = ["in_fixed_chunks"]

Out = TypeVar("Out")


def in_fixed_chunks(
    compute: Callable[[np.ndarray], dict[str, np.ndarray] | np.ndarray], rows: int, size: int
) -> dict[str, np.ndarray] | np.ndarray:
    """Call ``compute(indices)`` on chunks of exactly ``size`` indices and join the results.

    Args:
        compute: takes an index array of length ``size`` and returns an array
            (or a dict of arrays) with one entry per index.
        rows: how many rows there are.
        size: the fixed chunk length; the last chunk repeats its final index.

    Returns:
        the results for ``range(rows)``, padding removed, in the same structure
        ``compute`` returns.
    """
    if size < 1:
        raise ValueError(f"micro-batch size must be positive, got {size}")
    parts = []
    for start in range(0, rows, size):
        indices = np.arange(start, min(start + size, rows))
        padded = np.concatenate([indices, np.full(size - len(indices), indices[-1])])
        result = compute(padded)
        keep = len(indices)
        parts.append({k: v[:keep] for k, v in result.items()} if isinstance(result, dict) else result[:keep])
    if isinstance(parts[0], dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return np.concatenate(parts)
