"""Actor pools full from the start (``plan.pool_options``, ``StageSpec.initial_concurrency``) and the
progress display before the counting passes answer (``runner.execute_counting``); no Ray started."""

from __future__ import annotations

import io
import logging
from concurrent.futures import Future

import pytest

from pipelines.layout import OutputLayout
from pipelines.plan import pool_options
from pipelines.progress import Counts, RunProgress, progress_line
from pipelines.runner import _set_total
from pipelines.spec import SpecError, StageSpec, load_spec


def _spec(*sets: str):
    raw = {"input": {"uri": "/tmp/prompts.parquet"}, "output": {"uri": "/tmp/out"}, "model": {"uri": "builtin:x"}}
    return load_spec(raw=raw, sets=list(sets))


def _sizes(stage: StageSpec) -> tuple[int, float, int]:
    compute = pool_options(stage)["compute"]
    return compute.min_size, compute.max_size, compute.initial_size


def test_a_fixed_pool_starts_all_its_actors() -> None:
    assert _sizes(_spec("stages.generate.concurrency=4").stages.generate) == (4, 4, 4)
    assert _sizes(_spec().stages.generate) == (1, 1, 1)


def test_an_autoscaling_pool_starts_full_unless_told_otherwise() -> None:
    assert _sizes(_spec("stages.generate.concurrency=[1,4]").stages.generate) == (1, 4, 4)
    told = _spec("stages.generate.concurrency=[1,4]", "stages.generate.initial_concurrency=2").stages.generate
    assert _sizes(told) == (1, 4, 2)
    assert told.pool_sizes() == (1, 4, 2)
    # Ray Data's own default (start at min) is still one setting away; bench.pools compares with it
    assert _sizes(StageSpec(concurrency=(2, 4), initial_concurrency=2)) == (2, 4, 2)


@pytest.mark.parametrize("sets", [
    ["stages.generate.concurrency=[2,4]", "stages.generate.initial_concurrency=1"],
    ["stages.generate.concurrency=[2,4]", "stages.generate.initial_concurrency=5"],
    ["stages.generate.concurrency=3", "stages.generate.initial_concurrency=2"],
])
def test_initial_concurrency_outside_the_range_names_the_key(sets: list[str]) -> None:
    with pytest.raises(SpecError, match=r"stages\.generate.*initial_concurrency .* is outside concurrency"):
        _spec(*sets)


def test_a_fused_encode_stage_has_no_initial_concurrency() -> None:
    with pytest.raises(SpecError, match="stages.encode sets initial_concurrency"):
        _spec("stages.encode.initial_concurrency=1")


def test_progress_shows_an_unknown_total_until_the_counts_answer(tmp_path, caplog) -> None:
    assert progress_line(Counts(rows=4, images=4), total=None, elapsed_s=2.0) == (
        "pixelmill: 4/? rows, 2.0 images/s, 0 errors, ETA ?"
    )
    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.root, exist_ok=True)
    caplog.set_level(logging.INFO, logger="pipelines.progress")
    counted: Future[tuple[int, int]] = Future()
    with RunProgress(layout.committed_shards, layout.read_stats, total=None, stream=io.StringIO()) as progress:
        counted.add_done_callback(lambda done: _set_total(progress, done))
        assert progress.line().startswith("pixelmill: 0/? rows")
        counted.set_result((12, 2))  # (input_rows, skipped)
        assert progress.total == 10
    failed: Future[tuple[int, int]] = Future()
    with RunProgress(layout.committed_shards, layout.read_stats, total=None, stream=io.StringIO()) as progress:
        failed.add_done_callback(lambda done: _set_total(progress, done))
        failed.set_exception(RuntimeError("count failed"))  # the run raises it; the display stays unknown
        assert progress.total is None
    lines = [record.getMessage() for record in caplog.records if record.name == "pipelines.progress"]
    assert lines[0].startswith("pixelmill: 0/? rows") and "0/10 rows" in lines[1]


def test_the_duplicate_id_pass_is_sized_by_the_input_bytes() -> None:
    from pipelines.dedupe import BYTES_PER_PARTITION, MAX_PARTITIONS, id_partitions

    assert id_partitions(None) is None  # a grid: Ray Data's default
    assert id_partitions(0) == id_partitions(96 * 40) == id_partitions(BYTES_PER_PARTITION) == 1
    assert id_partitions(BYTES_PER_PARTITION + 1) == 2
    assert id_partitions(10**15) == MAX_PARTITIONS
