"""FLUX and SD3 end to end: the built-in tiny pipelines through ``run_job`` on real local Ray.

Each family reads the prompt through CLIP and T5; ``prompt_truncated`` is T5's verdict
(``models.families``). FLUX runs once with encode and generate in separate pools (the
embeddings cross Ray's object store) and once fused, at other batch sizes: the bytes agree.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output

OVER_CLIP = " ".join(["red cat"] * 50)  # 102 CLIP tokens, 101 T5 tokens: whole in the tiny T5 window (128)
OVER_T5 = " ".join(["red cat"] * 75)  # 151 T5 tokens: truncated
ROWS = [
    {"id": "plain", "prompt": "a red circle on a blue background"},
    {"id": "negative", "prompt": "a small green square", "negative_prompt": "blurry", "seed": 7},
    {"id": "over-clip", "prompt": OVER_CLIP},
    {"id": "over-t5", "prompt": OVER_T5},
    {"id": "odd-size", "prompt": "a purple star", "width": 40},  # a multiple of 8, not of 16
    {"id": "empty", "prompt": ""},
]
IMAGES = {"plain", "negative", "over-clip", "over-t5"}


def _spec(source: Path, out: Path, model_cache: str, model: str, **sets):
    raw = {
        "input": {"uri": str(source)},
        "output": {"uri": str(out), "samples_per_shard": 3, "report": False},
        "model": {"uri": f"builtin:{model}", "cache_dir": model_cache},
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "score": None,
        "seed": 5,
    }
    return load_spec(raw=raw, sets=[f"{key}={value}" for key, value in sets.items()])


def _run(spec, out: Path) -> dict:
    """Run ``spec``; check the equation, exactly-once, the size and truncation flags; return the rows by id."""
    summary = run_job(spec, mode="overwrite")
    assert (summary.images, summary.errors) == (len(IMAGES), 2) and summary.balanced
    output = read_output(str(out))
    check_exactly_once(output, [row["id"] for row in ROWS])
    rows = {row["id"]: row for row in output["rows"]}
    assert {row_id for row_id, row in rows.items() if row["status"] == "ok"} == IMAGES
    assert "multiples of 16" in rows["odd-size"]["error"] and rows["odd-size"]["stage"] == "generate"
    assert rows["empty"]["stage"] == "input"
    assert all(sample["image"].size == (32, 32) for sample in output["samples"])
    # T5's window decides: cut by CLIP alone is not truncated, cut by T5 is; tokens are T5's
    assert rows["over-clip"]["prompt_tokens"] == 101 and not rows["over-clip"]["prompt_truncated"]
    assert rows["over-t5"]["prompt_tokens"] == 151 and rows["over-t5"]["prompt_truncated"]
    assert not rows["plain"]["prompt_truncated"] and not rows["negative"]["negative_prompt_truncated"]
    return rows


def test_flux_separate_and_fused_pools_write_the_same_bytes(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    source = write_prompts(ROWS, "prompts.jsonl")
    separate = _run(_spec(source, tmp_path / "separate", model_cache, "tiny-flux", **{
        "placement.fuse_encode_generate": False, "stages.encode.batch_size": 2, "stages.generate.batch_size": 1,
        "defaults.guidance": 3.5}), tmp_path / "separate")
    fused = _run(_spec(source, tmp_path / "fused", model_cache, "tiny-flux", **{
        "placement.fuse_encode_generate": True, "stages.generate.batch_size": 6,
        "defaults.guidance": 3.5}), tmp_path / "fused")
    digests = [{row_id: rows[row_id]["sha256"] for row_id in IMAGES} for rows in (separate, fused)]
    assert digests[0] == digests[1] and len(set(digests[0].values())) == len(IMAGES)
    assert separate["plain"]["scheduler"] == "FlowMatchEulerDiscreteScheduler"


def test_sd3_with_classic_guidance_in_separate_pools(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    source = write_prompts(ROWS, "prompts.jsonl")
    rows = _run(_spec(source, tmp_path / "out", model_cache, "tiny-sd3", **{
        "placement.fuse_encode_generate": False, "stages.encode.batch_size": 3, "stages.generate.batch_size": 2,
        "defaults.guidance": 4.0}), tmp_path / "out")
    assert rows["negative"]["guidance"] == 4.0 and rows["negative"]["negative_prompt"] == "blurry"
    assert len({rows[row_id]["sha256"] for row_id in IMAGES}) == len(IMAGES)
