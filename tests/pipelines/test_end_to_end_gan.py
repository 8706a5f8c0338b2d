"""End to end with the GAN backend: encode -> generate (gan) -> style -> score -> shards, read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.runner import run_job
from pipelines.spec import SpecError, load_spec
from tests.pipelines.readback import read_output

RED_LEFT = "a large red circle on the left, blue background"
YELLOW_RIGHT = "a small yellow square on the right, black background"


def test_unknown_backend_is_rejected_with_the_allowed_names() -> None:
    raw = {"input": {"uri": "a.jsonl"}, "output": {"uri": "out"}, "generate": {"backend": "vqgan"}}
    with pytest.raises(SpecError, match=r"generate.backend: .*unknown backend 'vqgan'; allowed: diffusers, gan"):
        load_spec(raw=raw)
    assert load_spec(raw={**raw, "generate": {}}).generate.backend == "diffusers"


def test_gan_run_styles_scores_and_shards(ray_session, write_prompts, tmp_path: Path, model_cache: str) -> None:
    from models.diffusion import PromptEncoder
    from models.gan import GANImageGenerator
    from models.store import resolve_model_path

    rows = [
        {"id": "plain", "prompt": RED_LEFT, "seed": 5, "style": ""},
        {"id": "styled", "prompt": RED_LEFT, "seed": 5, "style": "style-04"},
        {"id": "other", "prompt": YELLOW_RIGHT, "seed": 6, "style": "", "steps": 8, "guidance": 3.0},
        {"id": "empty", "prompt": "", "style": ""},
    ]
    raw = {
        "input": {"uri": str(write_prompts(rows, "prompts.jsonl"))},
        "output": {"uri": str(tmp_path / "out"), "samples_per_shard": 2},
        "model": {"uri": "builtin:shapes-gan", "cache_dir": model_cache},
        "generate": {"backend": "gan"},
        "style": {},
        "seed": 3,
    }
    summary = run_job(load_spec(raw=raw))
    assert (summary.rows, summary.images, summary.errors) == (4, 3, 1)
    out = read_output(str(tmp_path / "out"))
    by_id = {row["id"]: row for row in out["rows"]}
    assert by_id["empty"]["status"] == "error"
    for row in (by_id[i] for i in ("plain", "styled", "other")):
        # One generator pass, no guidance: recorded as such whatever the row asked for
        assert (row["steps"], row["guidance"]) == (1, 1.0)
        provenance = (row["pipeline"], row["scheduler"], row["model"])
        assert provenance == ("TextConditionalGAN", "none", "builtin:shapes-gan")
        assert row["clip_score"] is not None
    assert by_id["styled"]["style"] == "style-04" and by_id["plain"]["style"] in (None, "")
    samples = {s["json"]["id"]: np.asarray(s["image"].convert("RGB")) for s in out["samples"]}
    assert set(samples) == {"plain", "styled", "other"} and all(i.shape == (64, 64, 3) for i in samples.values())
    assert np.abs(samples["styled"].astype(int) - samples["plain"]).mean() > 10
    # The unstyled row is the models layer's image, byte for byte (PNG is lossless)
    path = resolve_model_path("builtin:shapes-gan", cache_dir=model_cache)
    embeds = PromptEncoder(path).encode([RED_LEFT], None, guidance=[1.0], micro_batch=4)
    expected = GANImageGenerator(path).generate(embeds, seeds=[5], width=64, height=64, micro_batch=4)[0]
    assert np.array_equal(samples["plain"], expected)
    # The score stage saw the prompt's colours (shapes-clip scores held-out GAN images 81 on average)
    assert by_id["plain"]["clip_score"] > 50


def test_one_pass_student_hands_token_states_through_the_pipeline(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    """The distilled student reads ``prompt_embeds`` [77, 64] per row: through Ray, the models layer's bytes."""
    from models.diffusion import PromptEncoder
    from models.gan import GANImageGenerator
    from models.store import resolve_model_path

    rows = [{"id": "a", "prompt": RED_LEFT, "seed": 5}, {"id": "b", "prompt": YELLOW_RIGHT, "seed": 6}]
    raw = {
        "input": {"uri": str(write_prompts(rows, "prompts.jsonl"))},
        "output": {"uri": str(tmp_path / "out")},
        "model": {"uri": "builtin:shapes-turbo", "cache_dir": model_cache},
        "generate": {"backend": "gan"},
    }
    summary = run_job(load_spec(raw=raw))
    assert (summary.rows, summary.images, summary.errors) == (2, 2, 0)
    out = read_output(str(tmp_path / "out"))
    assert {row["model"] for row in out["rows"]} == {"builtin:shapes-turbo"}
    samples = {s["json"]["id"]: np.asarray(s["image"].convert("RGB")) for s in out["samples"]}
    path = resolve_model_path("builtin:shapes-turbo", cache_dir=model_cache)
    # At the actors' thread count: Ray runs a 1-CPU actor with one intra-op thread. At 2 threads the
    # student's kernels block by batch shape, and one uint8 of YELLOW_RIGHT moved (models/batching.py, cause 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embeds = PromptEncoder(path).encode([RED_LEFT, YELLOW_RIGHT], None, guidance=[1.0, 1.0], micro_batch=4)
        expected = GANImageGenerator(path).generate(embeds, seeds=[5, 6], width=64, height=64, micro_batch=4)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(samples["a"], expected[0]) and np.array_equal(samples["b"], expected[1])
