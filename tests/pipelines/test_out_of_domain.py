"""Prompts outside what a built-in model draws are called out, not passed as fine (issue 17, item 9)."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.runner import run_job
from pipelines.spec import load_spec

AD_PROMPTS = [
    "a bottle of perfume on a marble table, studio lighting, luxury advertisement",
    "a smiling family eating breakfast in a sunny kitchen, lifestyle photo",
    "a red sports car on a mountain road at sunset, cinematic",
]


def _run(tmp_path: Path, name: str, prompts: list[str], model_cache: str):
    source = tmp_path / f"{name}.jsonl"
    source.write_text("".join(json.dumps({"id": f"{name}{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    raw = {"input": {"uri": str(source)}, "output": {"uri": str(tmp_path / name), "samples_per_shard": 4},
           "model": {"cache_dir": model_cache}, "score": {"model": {"cache_dir": model_cache}},
           "defaults": {"steps": 2}}
    return run_job(load_spec(raw=raw))


def test_off_world_prompts_get_a_warning_in_the_summary_record_and_report(
    ray_session, tmp_path: Path, model_cache: str
) -> None:
    world = [json.loads(line)["prompt"] for line in Path("examples/prompts.jsonl").read_text().splitlines()[:3]]
    fine = _run(tmp_path, "world", world, model_cache)
    assert fine.balanced and fine.scored == 3 and fine.clip_score_mean is not None and fine.clip_score_mean > 60
    assert fine.warnings == []

    ads = _run(tmp_path, "ads", AD_PROMPTS, model_cache)
    assert ads.balanced and ads.images == 3 and ads.scored == 3
    assert ads.clip_score_mean is not None and ads.clip_score_mean < 54.3, ads.clip_score_mean
    assert len(ads.warnings) == 1 and "far below the 92.1" in ads.warnings[0]
    assert "outside what builtin:shapes-sd can draw" in ads.warnings[0]
    record = json.loads((tmp_path / "ads" / "_run.json").read_text())
    assert record["warnings"] == ads.warnings
    report = (tmp_path / "ads" / "report.html").read_text()
    assert "run-warning" in report and "far below the 92.1" in report
    assert "run-warning" not in (tmp_path / "world" / "report.html").read_text()
