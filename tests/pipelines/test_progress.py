"""The run's progress display (``pipelines/progress.py``): its line, its ETA, and its counts read from
real stats files of an output folder (no Ray)."""

from __future__ import annotations

import io
import logging

import pytest

from pipelines.layout import OutputLayout
from pipelines.progress import Counts, RunProgress, configure_ray_progress, format_eta, progress_line


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "?"), (float("inf"), "?"), (0.0, "0s"), (12.4, "12s"), (59.6, "1m00s"), (270.0, "4m30s"),
    (3600.0, "1h00m"), (3725.0, "1h02m"),
])
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_progress_line():
    counts = Counts(rows=120, images=118, errors=2)
    # 118 images in 37.5 s = 3.1/s; 120 rows in 37.5 s = 3.2 rows/s, so 880 rows left take 275 s
    assert progress_line(counts, total=1000, elapsed_s=37.5) == (
        "pixelmill: 120/1000 rows, 3.1 images/s, 2 errors, ETA 4m35s"
    )
    assert progress_line(Counts(), total=50, elapsed_s=0.0) == "pixelmill: 0/50 rows, 0.0 images/s, 0 errors, ETA ?"
    assert progress_line(Counts(rows=3, images=3), total=3, elapsed_s=120.0) == (
        "pixelmill: 3/3 rows, 0.025 images/s, 0 errors, ETA 0s"
    )
    assert progress_line(Counts(rows=5, images=4, errors=1), total=5, elapsed_s=2.0).endswith(
        "5/5 rows, 2.0 images/s, 1 error, ETA 0s"
    )


def _commit(layout: OutputLayout, shard: int, *, ok: int, errors: int, filtered: int = 0) -> None:
    stats = {"shard": shard, "count": ok + errors + filtered, "successes": ok, "failures": errors,
             "filtered": filtered}
    layout.write_json(layout.shard_file("stats", shard), stats)


def test_run_progress_counts_this_runs_shards_and_logs_lines(tmp_path, caplog):
    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.root, exist_ok=True)
    _commit(layout, 0, ok=8, errors=0)  # an earlier run's shard: not this run's progress
    caplog.set_level(logging.INFO, logger="pipelines.progress")
    stream = io.StringIO()  # not a terminal: log lines, no bar
    with RunProgress(layout.committed_shards, layout.read_stats, total=10, stream=stream) as progress:
        _commit(layout, 1, ok=3, errors=1)
        _commit(layout, 2, ok=4, errors=0, filtered=2)
        progress.update()
        assert progress.counts == Counts(rows=10, images=7, errors=1)
        progress.update()  # a shard is counted once
        assert progress.counts == Counts(rows=10, images=7, errors=1)
    lines = [record.getMessage() for record in caplog.records if record.name == "pipelines.progress"]
    assert lines[0].startswith("pixelmill: 0/10 rows, 0.0 images/s, 0 errors, ETA ?")
    assert lines[-1].startswith("pixelmill: 10/10 rows, ") and lines[-1].endswith("1 error, ETA 0s")
    assert stream.getvalue() == ""


def test_ray_progress_switch():
    from ray.data import DataContext

    context = DataContext()
    configure_ray_progress(context, enabled=False)
    assert not context.enable_progress_bars and not context.enable_operator_progress_bars
    assert logging.getLogger("ray.data._internal.progress").level == logging.ERROR
    configure_ray_progress(context, enabled=True)
    assert context.enable_progress_bars and context.enable_operator_progress_bars
    assert logging.getLogger("ray.data._internal.progress").level == logging.NOTSET
