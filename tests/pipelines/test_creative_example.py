"""``examples/creative_batch.yaml`` as written, end to end on real parts: local Ray and the shipped models.

grid -> template -> shapes-lm variations -> shapes-sd images -> shapes-clip score with a
regenerate loop. Checks what a user of the example relies on: every sample exactly once under
``<grid id>/<variation>/<image>``, the brief kept in ``source_prompt``, the LLM's caption a
world caption that keeps what the brief named, one text per variation and different texts
across variations, and a resume that draws nothing again.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pipelines.grid import grid_id
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output
from training import requests, world

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "creative_batch.yaml"


def test_the_creative_batch_example_runs_as_written(ray_session, tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE, output_uri=str(tmp_path / "out"), sets=["output.report=false"])
    assert spec.input.grid is not None and spec.llm is not None
    briefs = {
        grid_id({"colour": c, "shape": s, "background": b}): f"a {c} {s} on a {b} background"
        for c in spec.input.grid["colour"] for s in spec.input.grid["shape"] for b in spec.input.grid["background"]
    }
    ids = [f"{brief}/{v}/{k}" for brief in briefs for v in range(spec.llm.variations)
           for k in range(spec.images_per_prompt)]

    summary = run_job(spec, mode="overwrite")

    out = read_output(spec.output.uri)
    check_exactly_once(out, ids)
    assert summary.input_rows == len(ids) == 48 and summary.errors == 0
    assert "(samples of 12 prompts, variations 2, images_per_prompt 2)" in summary.line()
    rows = {row["id"]: row for row in out["rows"]}
    kept = 0
    texts: dict[str, set[str]] = defaultdict(set)
    for row in rows.values():
        brief_id = row["parent_id"]
        assert row["source_prompt"] == briefs[brief_id]
        texts[f"{brief_id}/{row['variation_index']}"].add(row["prompt"])
        scene = world.parse_caption(row["prompt"])
        constraints = requests.named_attributes(row["source_prompt"])
        kept += scene is not None and constraints is not None and requests.satisfies(scene, constraints)
    assert all(len(variation) == 1 for variation in texts.values()), "the images of a variation share one text"
    per_brief = defaultdict(set)
    for variation, (text,) in texts.items():
        per_brief[variation.rsplit("/", 1)[0]].add(text)
    assert sum(len(t) for t in per_brief.values()) >= 0.75 * len(texts), per_brief  # variations mostly differ
    assert kept >= 0.9 * len(rows), f"{kept} of {len(rows)} captions keep what their brief named"
    for sample in out["samples"]:  # the tar's caption is the LLM's text, the image the one scored
        assert sample["txt"] == rows[sample["json"]["id"]]["prompt"]

    again = run_job(spec, mode="resume")
    assert again.skipped == len(ids) and again.images == 0
