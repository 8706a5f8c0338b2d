"""The dataset card lets Hugging Face ``datasets`` load any output (issue 15, kind 9)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: nothing to fetch
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pipelines.card import MARKER, card_text, sample_features  # noqa: E402
from pipelines.runner import run_job  # noqa: E402
from pipelines.spec import load_spec  # noqa: E402

SCHEMA = pa.schema([
    ("id", pa.string()), ("seed", pa.int64()), ("guidance", pa.float64()), ("generate_s", pa.float64()),
    ("tags", pa.list_(pa.string())), ("rec", pa.struct([("k", pa.int64())])), ("blob", pa.binary()),
    ("dec", pa.decimal128(10, 2)), ("note", pa.null()), ("ll", pa.list_(pa.list_(pa.int64()))),
])


def test_features_follow_the_sample_json_rules() -> None:
    from datasets import Features

    features = sample_features(SCHEMA, "png")
    parsed = Features._from_yaml_list(yaml.safe_load(yaml.safe_dump(features)))
    sample = parsed["json"]
    assert "generate_s" not in sample  # timings are not in the samples
    assert str(sample["seed"].dtype) == "int64" and str(sample["note"].dtype) == "string"
    assert str(sample["dec"].dtype) == "string" and set(sample["blob"]) == {"base64"}
    assert parsed["png"].__class__.__name__ == "Image"
    text = card_text(SCHEMA, "png", images=3)
    assert text.startswith("---\n") and MARKER in text


def test_datasets_loads_an_output_whose_first_shard_has_only_nulls(
    ray_session, write_prompts, tmp_path: Path, model_cache: str
) -> None:
    from datasets import load_dataset

    rows = [{"id": f"r{i}", "prompt": f"a red circle {i}", "note": None if i < 2 else f"text {i}"} for i in range(4)]
    path = write_prompts(rows, "prompts.jsonl")
    out = tmp_path / "out"
    raw = {"input": {"uri": str(path)}, "output": {"uri": str(out), "samples_per_shard": 2, "report": False},
           "model": {"cache_dir": model_cache}, "score": None, "defaults": {"width": 32, "height": 32, "steps": 1}}
    assert run_job(load_spec(raw=raw)).images == 4
    assert MARKER in (out / "README.md").read_text()
    dataset = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert len(dataset) == 4
    notes = {row["json"]["id"]: row["json"]["note"] for row in dataset}
    assert notes == {"r0": None, "r1": None, "r2": "text 2", "r3": "text 3"}
    assert dataset[0]["png"].size == (32, 32)
    # a user's own README.md is never overwritten
    (out / "README.md").write_text("my notes\n")
    run_job(load_spec(raw=raw), mode="append")
    assert (out / "README.md").read_text() == "my notes\n"
