"""End to end with the score stage's threshold: low-scoring images are filtered, counted, reported."""

from __future__ import annotations

from pathlib import Path

from pipelines.cli import main
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output


def test_min_score_filters_and_the_report_shows_it(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    rows = [{"id": f"c{i}", "prompt": f"a red circle on the left {i}"} for i in range(4)] + [{"id": "e", "prompt": ""}]
    out_dir = tmp_path / "out"
    spec = load_spec(raw={
        "input": {"uri": str(write_prompts(rows, "prompts.jsonl"))},
        "output": {"uri": str(out_dir), "samples_per_shard": 8},
        "model": {"cache_dir": model_cache},
        "score": {"model": {"uri": "builtin:tiny-clip", "cache_dir": model_cache}, "min_score": 100},
        "defaults": {"width": 32, "height": 32, "steps": 1},
    })
    summary = run_job(spec)
    assert (summary.images, summary.errors, summary.filtered) == (0, 1, 4) and summary.balanced
    out = read_output(str(out_dir))
    check_exactly_once(out, [row["id"] for row in rows])
    filtered = [row for row in out["rows"] if row["status"] == "filtered"]
    assert len(filtered) == 4 and all(row["stage"] == "score" and 0 <= row["clip_score"] < 100 for row in filtered)
    assert out["samples"] == [] and out["stats"]["00000_stats.json"]["filtered"] == 4
    html = (out_dir / "report.html").read_text()
    assert "filtered" in html.lower() and "<svg" in html
    (out_dir / "report.html").unlink()
    assert main(["report", str(out_dir)]) == 0  # rebuilt from the shards alone
    assert (out_dir / "report.html").read_text().count("<svg") == html.count("<svg")
