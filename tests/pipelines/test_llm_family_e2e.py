"""An LLM-encoded family end to end: ``builtin:tiny-sana`` (Gemma 2 encoder) through real Ray and ``run_job``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actors.encode import EMBED_PREFIX, EncodeStage
from pipelines.runner import run_job
from pipelines.spec import ModelSpec, StageSpec, load_spec
from tests.pipelines.readback import check_exactly_once, read_output

MODEL = "builtin:tiny-sana"
LONG = " ".join(["cat"] * 305)  # 306 tokens with BOS: past Sana's 300-token window
ROWS = [
    {"id": "p0", "prompt": "a red cat"},
    {"id": "p1", "prompt": "a blue dog on a beach", "negative_prompt": "blurry"},
    {"id": "p2", "prompt": "photo of a mountain at sunset"},
    {"id": "p3", "prompt": "a red cat", "seed": 9},
    {"id": "long", "prompt": LONG},
    {"id": "wide", "prompt": "a green tree", "width": 48},  # a multiple of 8, not of Sana's 32
]
OK_IDS = {"p0", "p1", "p2", "p3", "long"}


def _spec(source: Path, out: Path, model_cache: str, *, fuse: bool, encode_batch: int, generate_batch: int):
    stages = {"generate": {"batch_size": generate_batch, "micro_batch_size": 2}}
    if not fuse:
        stages["encode"] = {"batch_size": encode_batch, "micro_batch_size": 2}
    return load_spec(raw={
        "input": {"uri": str(source)},
        "output": {"uri": str(out), "samples_per_shard": 4, "report": False},
        "model": {"uri": MODEL, "cache_dir": model_cache},
        "score": None,
        "defaults": {"width": 32, "height": 32, "steps": 1, "guidance": 4.5},  # guidance > 1: CFG with the negatives
        "stages": stages,
        "placement": {"fuse_encode_generate": fuse},
    })


def test_both_placements_write_the_same_images_exactly_once(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    source = write_prompts(ROWS, "prompts.jsonl")
    hashes = {}
    # Different stage batch sizes per placement: the bytes depend on micro_batch_size only
    for name, fuse, encode_batch, generate_batch in (("fused", True, 0, 4), ("separate", False, 3, 2)):
        spec = _spec(source, tmp_path / name, model_cache, fuse=fuse, encode_batch=encode_batch,
                     generate_batch=generate_batch)
        summary = run_job(spec, mode="overwrite")
        assert (summary.images, summary.errors) == (len(OK_IDS), 1) and summary.balanced
        out = read_output(str(tmp_path / name))
        check_exactly_once(out, [row["id"] for row in ROWS])
        rows = {row["id"]: row for row in out["rows"]}
        assert rows["wide"]["status"] == "error" and "multiples of 32" in rows["wide"]["error"]
        assert {row_id for row_id, row in rows.items() if row["status"] == "ok"} == OK_IDS
        assert all(rows[row_id]["pipeline"] == "SanaPipeline" for row_id in OK_IDS)
        # The truncation flag follows Sana's window (300 tokens), not CLIP's 77
        assert rows["long"]["prompt_tokens"] == 306 and rows["long"]["prompt_truncated"]
        assert not any(rows[row_id]["prompt_truncated"] for row_id in OK_IDS - {"long"})
        assert {sample["image"].size for sample in out["samples"]} == {(32, 32)}
        hashes[name] = {row_id: rows[row_id]["sha256"] for row_id in OK_IDS}
    assert hashes["fused"] == hashes["separate"]
    assert hashes["fused"]["p0"] != hashes["fused"]["p3"]  # same prompt, another seed


def test_embedding_bytes_per_row_between_separate_pools(model_cache: str) -> None:
    """What one row's embedding columns weigh as the Arrow block that goes from the encode pool to generate."""
    from ray.data.block import BlockAccessor

    stage = EncodeStage(model=ModelSpec(uri=MODEL, cache_dir=model_cache), stage=StageSpec(micro_batch_size=2))
    prompts = ["a red cat", "a blue dog", "a tree", "a house at night"]
    out = stage({
        "prompt": np.array(prompts, dtype=object),
        "negative_prompt": np.array([""] * 4, dtype=object),
        "guidance": np.full(4, 4.5),
        "status": np.array(["ok"] * 4, dtype=object),
        "stage": np.array([""] * 4, dtype=object),
        "error": np.array([""] * 4, dtype=object),
    })
    columns = {key: value for key, value in out.items() if key.startswith(EMBED_PREFIX)}
    per_row = BlockAccessor.batch_to_block(columns).nbytes / len(prompts)
    # float32: 2 x (300 tokens x 32 hidden) hidden states + 2 x 300 mask values = 79,200 bytes
    assert 2 * 300 * 32 * 4 + 2 * 300 * 4 <= per_row <= 1.01 * (2 * 300 * 32 * 4 + 2 * 300 * 4)
