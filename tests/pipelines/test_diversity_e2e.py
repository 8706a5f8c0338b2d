"""Diversity figures end to end on real Ray and the built-in world: they tell a diverse run from a degenerate one."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.cli import main
from pipelines.diversity import EMBEDDING_TYPE, NO_SCORE_WHY
from pipelines.layout import OutputLayout
from pipelines.resume import foreign_files
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import read_output

PROMPTS = [
    "a red circle on a blue background", "a small green square", "a yellow triangle at the top", "a purple star",
    "two orange circles", "a white square on black", "a big blue circle", "a green triangle on red",
]


def _run(rows: list[dict], write_prompts, tmp_path: Path, model_cache: str, name: str, **extra):
    raw = {
        "input": {"uri": str(write_prompts(rows, name=f"{name}.jsonl"))},
        "output": {"uri": str(tmp_path / name), "samples_per_shard": 3},
        "model": {"cache_dir": model_cache},
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "seed": 5,
        **extra,
    }
    summary = run_job(load_spec(raw=raw), mode="overwrite")
    assert summary.balanced, summary.equation
    return summary


def test_diverse_and_degenerate_runs_are_told_apart(ray_session, write_prompts, tmp_path, model_cache) -> None:
    diverse = _run([{"id": f"d{i}", "prompt": p} for i, p in enumerate(PROMPTS)], write_prompts, tmp_path,
                   model_cache, "diverse", score={"model": {"cache_dir": model_cache}})
    # A sample of 6 of the 8 images: exact duplicates still count all 8, the pairwise figures the 6.
    degenerate = _run([{"id": f"s{i}", "prompt": PROMPTS[0], "seed": 42} for i in range(len(PROMPTS))],
                      write_prompts, tmp_path, model_cache, "degenerate", score={"model": {"cache_dir": model_cache}},
                      diversity={"sample_size": 6})
    good, bad = diverse.diversity, degenerate.diversity
    assert good is not None and bad is not None
    # Same prompt and seed for every row: the same bytes, the same embedding.
    assert bad["images"] == 8 and bad["exact_duplicates"] == {"images": 8, "groups": 1}
    assert bad["near_duplicates"] == {"pairs": 15, "images": 6}
    assert 0 <= bad["mean_distance"] < 1e-4
    assert bad["sample"] == {"images": 6, "groups": 6, "of": 8, "rule": bad["sample"]["rule"]}
    assert good["sample"]["images"] == 8
    # Different prompts and seeds: no exact duplicate, and a spread far above the degenerate run's.
    assert good["images"] == 8 and good["exact_duplicates"] == {"images": 0, "groups": 0}
    assert good["near_duplicates"]["pairs"] < 28
    assert good["mean_distance"] > 0.05 > 100 * bad["mean_distance"], (good, bad)
    assert good["why"] is None and bad["why"] is None
    # The figures are in _run.json, the pairs beside the shards, the embedding in the Parquet (not the tar JSON).
    out = read_output(str(tmp_path / "degenerate"))
    assert out["run"]["diversity"] == bad
    pairs = pq.read_table(tmp_path / "degenerate" / bad["pairs_table"])
    assert pairs.num_rows == 15 and min(pairs.column("cosine").to_pylist()) > 0.999
    assert str(bad["pairs_table"]).startswith("_diversity/")
    parquet = pq.read_table(tmp_path / "degenerate" / "00000.parquet")
    assert parquet.schema.field("image_embedding").type == EMBEDDING_TYPE
    assert all(len(v) > 0 for v in parquet.column("image_embedding").to_pylist())
    assert all("image_embedding" not in sample["json"] for sample in out["samples"])
    assert foreign_files(OutputLayout(str(tmp_path / "degenerate"))) == []
    html = (tmp_path / "degenerate" / "report.html").read_text()
    assert 'id="diversity"' in html and 'id="exact-duplicates">8 images in 1 groups' in html
    assert json.loads((tmp_path / "diverse" / "_run.json").read_text())["diversity"]["exact_duplicates"]["images"] == 0


def test_without_the_score_stage_only_exact_duplicates(
    ray_session, write_prompts, tmp_path, model_cache, capsys
) -> None:
    """Through the command: the summary's diversity lines say exact duplicates only, and why."""
    import yaml

    rows = [{"id": f"s{i}", "prompt": PROMPTS[0], "seed": 3} for i in range(3)] + [{"id": "x", "prompt": PROMPTS[1]}]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "input": {"uri": str(write_prompts(rows, name="noscore.jsonl"))},
        "output": {"uri": str(tmp_path / "noscore"), "samples_per_shard": 3},
        "model": {"cache_dir": model_cache}, "score": None, "defaults": {"width": 32, "height": 32, "steps": 1},
    }))
    assert main(["run", str(job)]) == 0
    printed = capsys.readouterr().out
    assert "pixelmill: diversity: 3 of 4 images are exact duplicates (1 distinct)" in printed
    assert "score stage is off" in printed
    figures = json.loads((tmp_path / "noscore" / "_run.json").read_text())["diversity"]
    assert figures["exact_duplicates"] == {"images": 3, "groups": 1}
    assert figures["near_duplicates"] is None and figures["mean_distance"] is None and figures["sample"] is None
    assert figures["why"] == NO_SCORE_WHY
    assert not (tmp_path / "noscore" / "_diversity").exists()
    html = (tmp_path / "noscore" / "report.html").read_text()
    assert 'id="diversity-why"' in html
