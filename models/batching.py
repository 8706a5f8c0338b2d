"""Batch invariance: the same row gives the same bits whatever batch it came in.

Two causes make a row's result depend on its batch, and this module removes both.

1. **The batch's shape.** BLAS and convolution kernels pick their blocking from the
   tensor shapes, so a row's result can change in the last bit when the batch size
   changes (seen on CPU with the built-in model: one uint8 off by 1 between a batch
   of 6 and a batch of 1). ``in_fixed_chunks`` runs every forward pass at one fixed
   batch shape, padding the last chunk by repeating a row: a row's output then
   depends only on the micro-batch size, not on the stage's batch size, pool size or
   row order.
2. **The row's position inside a batch, under several threads.** With more than one
   intra-op thread, MKL's single-precision GEMM for a matrix of few rows (measured:
   5-7 and 9-11 rows at 2 or 8 threads, 17-19 and 25-27 more at 16; none at 1
   thread) splits the rows into blocks of 4 and 8 and hands the 1-3 left over to a
   tail kernel that accumulates in another order. So identical rows of one
   ``F.linear`` call came out different by an ulp depending on where they sat, and
   at guidance > 1 (the UNet's timestep embedding runs on ``2 * micro_batch`` rows)
   one uint8 moved. ``RowwiseSmallLinear`` computes every CPU ``F.linear`` with at
   most ``SMALL_GEMM_ROWS`` rows as a batch of one-row products (``torch.baddbmm``),
   which runs the same kernel for every row wherever it sits; ``in_fixed_chunks``
   switches it on around each chunk. Larger GEMMs use MKL's packed path, which was
   position-independent at every thread count measured (1-16, up to 200 rows), as
   were Conv2d, attention and NCHW GroupNorm.

CUDA is left alone: a GEMM there computes each output tile with one kernel and one
reduction order, and changing GPU numerics would change every GPU run's bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

__all__ = ["SMALL_GEMM_ROWS", "RowwiseSmallLinear", "in_fixed_chunks"]

# Row counts up to this go row by row. Position dependence was measured up to 27 rows
# (16 threads); 128 leaves a margin for wider machines and still covers only small
# products (timestep embeddings, pooled projections), where the cost is negligible.
SMALL_GEMM_ROWS = 128


def _rowwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as one single-row product per row (same kernel for every row)."""
    rows = x.reshape(-1, 1, x.shape[-1])
    weights = weight.t().unsqueeze(0).expand(rows.shape[0], -1, -1)
    if bias is None:
        out = torch.bmm(rows, weights)
    else:
        out = torch.baddbmm(bias.reshape(1, 1, -1).expand(rows.shape[0], 1, -1), rows, weights)
    return out.reshape(*x.shape[:-1], weight.shape[0])


class RowwiseSmallLinear(TorchFunctionMode):
    """A torch function mode in which small CPU ``F.linear`` calls are position-independent.

    Inside ``with RowwiseSmallLinear():``, every ``torch.nn.functional.linear`` whose
    input lives on the CPU and has at most ``SMALL_GEMM_ROWS`` rows (all leading axes
    flattened) is computed by ``_rowwise_linear``; anything else runs unchanged. The
    result has the shape and dtype ``F.linear`` returns. See the module docstring for
    why.
    """

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.device.type == "cpu" and x.dim() >= 2 and x.numel() // max(x.shape[-1], 1) <= SMALL_GEMM_ROWS:
                return _rowwise_linear(x, weight, bias)
        return func(*args, **kwargs)


@overload
def in_fixed_chunks(compute: Callable[[np.ndarray], np.ndarray], rows: int, size: int) -> np.ndarray: ...


@overload
def in_fixed_chunks(
    compute: Callable[[np.ndarray], dict[str, np.ndarray]], rows: int, size: int
) -> dict[str, np.ndarray]: ...


def in_fixed_chunks(
    compute: Callable[[np.ndarray], dict[str, np.ndarray] | np.ndarray], rows: int, size: int
) -> dict[str, np.ndarray] | np.ndarray:
    """Call ``compute(indices)`` on chunks of exactly ``size`` indices and join the results.

    Each call runs inside ``RowwiseSmallLinear``, so a row's result depends neither on
    the other rows nor on its position in the chunk.

    Args:
        compute: takes an index array of length ``size`` and returns an array
            (or a dict of arrays) with one entry per index.
        rows: how many rows there are.
        size: the fixed chunk length; the last chunk repeats its final index.

    Returns:
        the results for ``range(rows)``, padding removed, in the same structure
        ``compute`` returns.

    Raises:
        ValueError: ``size`` is below 1.
    """
    if size < 1:
        raise ValueError(f"micro-batch size must be positive, got {size}")
    parts = []
    for start in range(0, rows, size):
        indices = np.arange(start, min(start + size, rows))
        padded = np.concatenate([indices, np.full(size - len(indices), indices[-1])])
        with RowwiseSmallLinear():
            result = compute(padded)
        keep = len(indices)
        parts.append({k: v[:keep] for k, v in result.items()} if isinstance(result, dict) else result[:keep])
    if isinstance(parts[0], dict):
        dicts = [part for part in parts if isinstance(part, dict)]
        return {key: np.concatenate([part[key] for part in dicts]) for key in parts[0]}
    return np.concatenate([part for part in parts if isinstance(part, np.ndarray)])
