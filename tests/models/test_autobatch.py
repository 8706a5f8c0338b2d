"""``micro_batch_size: auto``'s search (``models.autobatch``): settles under an injected out-of-memory
threshold, remembers the fit per shape, backs off again later, and never changes a row's bytes.

The out-of-memory errors are the real ``RuntimeError`` CUDA raises, thrown before a pass above a
row count (the search's ``before_pass`` hook, the one ``pipelines.faults`` drives in the stage).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from models.autobatch import BYTES_DIFFER, OUT_OF_MEMORY, Backoff, MicroBatchSearch
from models.diffusion import ImageGenerator, PromptEncoder
from models.store import resolve_model_path
from pipelines.resilience import is_out_of_memory

PROMPTS = [f"a red circle on blue, number {i}" for i in range(8)]
SEEDS = list(range(100, 108))


class Threshold:
    """Raises CUDA's out-of-memory error before any pass of more than ``limit`` rows; logs every size."""

    def __init__(self, limit: int) -> None:
        self.limit, self.sizes = limit, []

    def __call__(self, size: int) -> None:
        self.sizes.append(size)
        if size > self.limit:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate {size} GiB (test threshold {self.limit})")


def _rowwise(size: int) -> np.ndarray:
    """A batch-invariant computation: eight rows, each a function of its index only."""
    return (np.arange(8, dtype=np.uint8)[:, None] * 3 + np.arange(4, dtype=np.uint8)).astype(np.uint8)


def _search(limit: int, ceiling: int = 32) -> tuple[MicroBatchSearch, Threshold, list[int]]:
    threshold, freed = Threshold(limit), []
    search: MicroBatchSearch = MicroBatchSearch(
        ceiling=ceiling, is_out_of_memory=is_out_of_memory, images=lambda result: result,
        before_pass=threshold, free_cache=lambda: freed.append(1),
    )
    return search, threshold, freed


@pytest.mark.parametrize("limit, settles", [(5, 4), (32, 32), (1, 1)])
def test_settles_on_the_largest_size_that_fits_and_remembers_it(limit: int, settles: int) -> None:
    search, threshold, freed = _search(limit)
    result, size = search.run("32x32", _rowwise, 32)
    assert size == settles and search.fits == {"32x32": settles}
    assert np.array_equal(result, _rowwise(1))
    oom = [s for s in (32, 16, 8, 4, 2) if s > limit]
    assert search.backoffs == [Backoff("32x32", s, OUT_OF_MEMORY) for s in oom] and len(freed) == len(oom)
    threshold.sizes.clear()
    assert search.run("32x32", _rowwise, 32)[1] == settles
    assert threshold.sizes == [settles]  # remembered: one pass, no search
    assert search.run("64x64", _rowwise, 32)[1] == settles and "64x64" in search.fits  # a new shape searches again


def test_a_later_out_of_memory_error_halves_the_remembered_size() -> None:
    search, threshold, _ = _search(8)
    assert search.run("s", _rowwise, 32)[1] == 8
    threshold.limit = 3  # the device got fuller (another process, fragmentation)
    result, size = search.run("s", _rowwise, 32)
    assert size == 2 and search.fits == {"s": 2} and np.array_equal(result, _rowwise(1))
    assert search.backoffs[-2:] == [Backoff("s", 8, OUT_OF_MEMORY), Backoff("s", 4, OUT_OF_MEMORY)]


def test_a_small_first_batch_starts_low_and_a_larger_one_searches_on() -> None:
    search, threshold, _ = _search(5)
    assert search.run("s", _rowwise, 3)[1] == 4 and threshold.sizes == [4, 1]  # 4 holds 3 rows; 1: the byte check
    assert search.growable == {"s"}
    threshold.sizes.clear()
    assert search.run("s", _rowwise, 4)[1] == 4 and threshold.sizes == [4]  # no larger than the fit: no search
    assert search.run("s", _rowwise, 20)[1] == 4 and threshold.sizes[1:4] == [32, 16, 8]
    assert not search.growable  # sizes above the fit were given up: it stays
    small, _, _ = _search(1)
    assert small.run("s", _rowwise, 3)[1] == 1 and not small.growable


def test_errors_other_than_out_of_memory_and_oom_at_one_row_are_raised() -> None:
    search, _, _ = _search(0)
    with pytest.raises(RuntimeError, match="out of memory"):
        search.run("s", _rowwise, 32)
    assert "s" not in search.fits

    def broken(size: int) -> np.ndarray:
        raise ValueError("a bad row")

    with pytest.raises(ValueError, match="a bad row"):
        _search(32)[0].run("s", broken, 32)
    with pytest.raises(ValueError, match="positive"):
        _search(4, ceiling=0)


def test_a_size_whose_bytes_differ_from_one_row_is_given_up() -> None:
    def by_size(size: int) -> np.ndarray:  # bytes that depend on the micro-batch above 2
        return _rowwise(1) + (size > 2)

    search, _, _ = _search(32, ceiling=8)
    result, size = search.run("s", by_size, 8)
    assert size == 2 and np.array_equal(result, by_size(1))
    assert search.backoffs == [Backoff("s", 8, BYTES_DIFFER), Backoff("s", 4, BYTES_DIFFER)]


@pytest.fixture(scope="module", params=["builtin:shapes-sd", "builtin:tiny-sd"])
def model(request: pytest.FixtureRequest, model_cache_dir: str) -> tuple[PromptEncoder, ImageGenerator]:
    path = resolve_model_path(request.param, cache_dir=model_cache_dir)
    return PromptEncoder(path), ImageGenerator(path)


def _digests(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(image.tobytes()).hexdigest() for image in images]


def test_auto_gives_the_bytes_of_micro_batch_one_on_a_real_model(model) -> None:
    """With an out-of-memory threshold of 4 rows: the search never keeps a size above 4, keeps a
    size exactly when the model gives micro-batch 1's bytes at it, and its images are those bytes.
    Guidance 3 (classic CFG doubles the UNet's batch), where sizes gave other bytes on CPU."""
    encoder, generator = model
    guidance = 3.0
    embeds = encoder.encode(PROMPTS, None, guidance=[guidance] * len(PROMPTS), micro_batch=2)
    kwargs = {"seeds": SEEDS, "width": 32, "height": 32, "steps": 1, "guidance": guidance}

    def draw(size: int) -> tuple[np.ndarray, dict]:
        return generator.generate_checked(embeds, micro_batch=size, **kwargs)

    fixed = {size: _digests(draw(size)[0]) for size in (1, 2, 4, 8)}
    search, threshold, _ = _search(4, ceiling=8)
    search.images = lambda result: result[0]
    (images, problems), size = search.run((32, 32, 1, guidance), draw, 8)
    assert _digests(images) == fixed[1] and problems == {}
    assert size <= 4 and search.fits == {(32, 32, 1, guidance): size}
    for backoff in search.backoffs:
        assert backoff.reason == (OUT_OF_MEMORY if backoff.size > 4 else BYTES_DIFFER)
        if backoff.reason == BYTES_DIFFER:
            assert fixed[backoff.size] != fixed[1]
    assert size == 1 or fixed[size] == fixed[1]
    threshold.sizes.clear()
    again, _ = search.run((32, 32, 1, guidance), draw, 8)
    assert _digests(again[0]) == fixed[1] and threshold.sizes == [size]
