"""Batch invariance (models.batching): fixed chunks and position-independent small GEMMs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from models.batching import SMALL_GEMM_ROWS, RowwiseSmallLinear, in_fixed_chunks
from models.diffusion import ImageGenerator, PromptEncoder


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def busy_cpu(processes: int = 2) -> Iterator[None]:
    """Spin every core with busy loops for the duration (each process is killed after)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_fixed_chunks_pad_with_the_last_row_and_drop_the_padding() -> None:
    seen: list[list[int]] = []

    def compute(indices: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(indices.tolist())
        return {"double": indices * 2}

    result = in_fixed_chunks(compute, 5, 3)
    assert seen == [[0, 1, 2], [3, 4, 4]]
    assert result["double"].tolist() == [0, 2, 4, 6, 8]
    assert in_fixed_chunks(lambda indices: indices + 1, 2, 4).tolist() == [1, 2]
    with pytest.raises(ValueError, match="must be positive"):
        in_fixed_chunks(compute, 3, 0)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_small_linear_gives_identical_rows_identical_bits(threads: int) -> None:
    generator = torch.Generator().manual_seed(threads)
    weight, bias = torch.randn(96, 40, generator=generator), torch.randn(96, generator=generator)
    with torch_threads(threads), RowwiseSmallLinear():
        for rows in [*range(1, 33), SMALL_GEMM_ROWS]:
            x = torch.randn(1, 40, generator=generator).expand(rows, 40).contiguous()
            y = torch.nn.functional.linear(x, weight, bias)
            assert all(torch.equal(y[0], y[i]) for i in range(rows)), rows
            # the same product, up to float rounding, as the plain kernel
            assert torch.allclose(y, x @ weight.t() + bias, atol=1e-5)


def test_rowwise_linear_keeps_shapes_and_bias_free_calls() -> None:
    x = torch.randn(2, 3, 8)
    layer = torch.nn.Linear(8, 5, bias=False)
    with RowwiseSmallLinear():
        y = layer(x)
    assert y.shape == (2, 3, 5) and y.dtype == torch.float32
    assert torch.allclose(y, x @ layer.weight.t(), atol=1e-6)


@pytest.fixture(scope="module")
def sd(tiny_sd_path: str) -> tuple[PromptEncoder, ImageGenerator]:
    return PromptEncoder(tiny_sd_path), ImageGenerator(tiny_sd_path)


PROMPTS = ["a red cat", "a blue dog on a beach", "photo of a mountain at sunset", "zebra!", "a green square"]


@pytest.mark.parametrize("threads, busy", [(1, False), (2, False), pytest.param(2, True, marks=pytest.mark.slow)])
def test_generated_rows_do_not_depend_on_their_batch(sd, threads: int, busy: bool) -> None:
    """Guidance 3 (CFG doubles the UNet's rows), micro-batch 3 (a padded last chunk)."""
    encoder, generator = sd
    kwargs = {"width": 32, "height": 32, "steps": 2, "guidance": 3.0, "micro_batch": 3}
    with torch_threads(threads), (busy_cpu() if busy else torch_threads(threads)):
        embeds = encoder.encode(PROMPTS, None, guidance=[3.0] * 5, micro_batch=3)
        full = generator.generate(embeds, seeds=list(range(5)), **kwargs)
        for order in ([4, 2, 0, 3, 1], [1, 3], [3]):
            part = encoder.encode([PROMPTS[i] for i in order], None, guidance=[3.0] * len(order), micro_batch=3)
            assert all(np.array_equal(part[key], embeds[key][order]) for key in embeds)
            images = generator.generate(part, seeds=order, **kwargs)
            for position, row in enumerate(order):
                assert images[position].tobytes() == full[row].tobytes(), (order, row)
