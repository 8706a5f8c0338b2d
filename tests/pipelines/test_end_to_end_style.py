"""End to end with the style stage: encode -> generate -> style -> shards, read back with webdataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import read_output


def test_styled_run_on_s3(ray_session, s3, write_prompts, tmp_path: Path, model_cache: str) -> None:
    style = np.zeros((80, 80, 3), np.uint8)
    style[::6] = (240, 180, 30)
    style_path = tmp_path / "stripes.png"
    Image.fromarray(style).save(style_path)
    s3.put(str(style_path), "pixelmill/styles/stripes.png")
    rows = [
        {"id": "plain", "prompt": "a red circle", "seed": 5, "style": ""},
        {"id": "builtin", "prompt": "a red circle", "seed": 5, "style": "style-04"},
        {"id": "image", "prompt": "a red circle", "seed": 5, "style": "s3://pixelmill/styles/stripes.png"},
        {"id": "half", "prompt": "a red circle", "seed": 5, "style": "style-04", "style_strength": 0.5},
        {"id": "missing", "prompt": "a red circle", "style": "s3://pixelmill/styles/nope.png"},
        {"id": "default", "prompt": "a blue square", "style": None},
    ]
    s3.put(str(write_prompts(rows, "prompts.jsonl")), "pixelmill/in/prompts.jsonl")
    raw = {
        "input": {"uri": "s3://pixelmill/in/prompts.jsonl"},
        "output": {"uri": "s3://pixelmill/styled", "samples_per_shard": 4},
        "model": {"cache_dir": model_cache},
        "style": {"default": "style-10"},
        "seed": 3,
    }
    summary = run_job(load_spec(raw=raw))
    assert (summary.rows, summary.images, summary.errors) == (6, 5, 1)
    out = read_output("s3://pixelmill/styled")
    rows_by_id = {row["id"]: row for row in out["rows"]}
    assert rows_by_id["missing"]["status"] == "error" and rows_by_id["missing"]["stage"] == "style"
    assert "not found" in rows_by_id["missing"]["error"]
    assert rows_by_id["default"]["style"] == "style-10"
    assert rows_by_id["half"]["style_strength"] == 0.5
    assert rows_by_id["image"]["style_hash"] and rows_by_id["image"]["style_backend"] == "onnx"
    samples = {s["json"]["id"]: np.asarray(s["image"].convert("RGB")).astype(int) for s in out["samples"]}
    assert set(samples) == {"plain", "builtin", "image", "half", "default"}
    for sample in out["samples"]:
        assert sample["json"]["style_backend"] == "onnx"
        assert sample["image"].size == (64, 64)
    # plain, builtin, image and half share prompt and seed: the same generated image, styled differently.
    styled = np.abs(samples["builtin"] - samples["plain"]).mean()
    assert styled > 10
    assert np.abs(samples["image"] - samples["plain"]).mean() > 10
    assert np.abs(samples["image"] - samples["builtin"]).mean() > 5
    half = np.abs(samples["half"] - samples["plain"]).mean()
    assert 0.35 * styled < half < 0.65 * styled
