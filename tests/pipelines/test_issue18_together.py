"""Issue 18's four parts in ONE run on real Ray: several images per prompt, the regenerate loop
(``keep: best``), the diversity figures grouped by prompt, and the cost figures.

Each part has its own tests; this one checks that they compose: every sample id ``<id>/<k>``
goes through the loop, the row keeps the chosen attempt's image AND its score and embedding
(recomputed here from the tar's image), the diversity groups are the prompts, and the cost
counts the loop's attempts.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.builtin import ensure_builtin_model
from models.clip_score import ClipScorer
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output
from training import world

pytestmark = pytest.mark.slow

PROMPTS = [text for text, _image, _scene in world.held_out(4, 2)]
N = 2  # images per prompt
K = 3  # attempts per image


def test_fan_out_loop_diversity_and_cost_compose(ray_session, tmp_path: Path, model_cache: str) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "out"
    spec = load_spec(raw={
        "input": {"uri": str(prompts)},
        "output": {"uri": str(out), "samples_per_shard": 3, "report": False},
        "model": {"uri": "builtin:shapes-sd", "cache_dir": model_cache},
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "stages": {"generate": {"batch_size": 4}},
        "score": {"model": {"uri": "builtin:shapes-clip", "cache_dir": model_cache}, "max_attempts": K, "keep": "best"},
        "images_per_prompt": N,
        "cost": {"cpu_hour": 0.5, "currency": "EUR"},
        "seed": 5,
    })
    summary = run_job(spec, mode="overwrite")

    samples = len(PROMPTS) * N
    assert summary.balanced and summary.input_rows == samples and summary.images == samples
    assert summary.prompts == len(PROMPTS)
    output = read_output(str(out))
    check_exactly_once(output, [f"p{i}/{k}" for i in range(len(PROMPTS)) for k in range(N)])

    # keep: best draws all K attempts and keeps the highest score; the row's score and embedding are
    # the kept image's own: recomputed from the committed PNG they agree.
    rows = {row["id"]: row for row in output["rows"]}
    scorer = ClipScorer(ensure_builtin_model("shapes-clip", cache_dir=model_cache))
    images = {s["json"]["id"]: np.asarray(Image.open(io.BytesIO(s["image_bytes"])).convert("RGB"))
              for s in output["samples"]}
    ids = sorted(images)
    found = scorer.score_and_embed([images[i] for i in ids], [rows[i]["prompt"] for i in ids], micro_batch=4)
    for n, row_id in enumerate(ids):
        row = rows[row_id]
        assert row["parent_id"] == row_id.rsplit("/", 1)[0] and row["image_index"] == int(row_id.rsplit("/", 1)[1])
        scores = row["attempt_scores"]
        assert row["attempts"] == K and len(set(row["attempt_seeds"])) == K
        assert row["chosen_attempt"] == scores.index(max(scores)) and row["clip_score"] == max(scores)
        assert found["score"][n] == pytest.approx(row["clip_score"], abs=1e-3)
        assert np.asarray(row["image_embedding"]) == pytest.approx(found["embedding"][n], abs=1e-4)
    # no two samples of a prompt drew the same seed (child and attempt seeds are salted apart)
    for parent in {r["parent_id"] for r in rows.values()}:
        seeds = [s for r in rows.values() if r["parent_id"] == parent for s in r["attempt_seeds"]]
        assert len(seeds) == len(set(seeds)) == N * K

    run = output["run"]
    diversity = run["diversity"]
    assert diversity["images"] == samples and diversity["within_prompt_distance"]["groups"] == len(PROMPTS)
    cost = run["cost"]
    generate = cost["stages"]["generate"]
    assert generate["busy_s"] > 0 and cost["currency"] == "EUR"
    assert cost["cpu_hours"] == pytest.approx(sum(s["cpu_hours"] for s in cost["stages"].values()), rel=1e-6)
    assert cost["per_1000_images"] == pytest.approx(cost["total"] / samples * 1000, rel=1e-3)
