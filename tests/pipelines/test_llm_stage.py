"""The LLM prompt stage: its spec, the variations fan-out, and runs end to end on local Ray.

``builtin:tiny-lm`` (random weights: gibberish, but deterministic) rewrites the prompts of
the built-in image model's rows; images are 32x32 with one step and no score stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipelines import schema
from pipelines.fanout import fan_out
from pipelines.retry import retry_errors
from pipelines.rows import child_seed, variation_seed
from pipelines.runner import run_job
from pipelines.spec import JobSpec, SpecError, load_spec
from tests.pipelines.readback import check_exactly_once, read_output

ROWS = [{"id": "a", "prompt": "a red cat"}, {"id": "b", "prompt": "a blue dog on the beach", "seed": 5}]


def _raw(input_uri: str, output_uri: str, model_cache: str, **llm: Any) -> dict[str, Any]:
    return {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "samples_per_shard": 5, "report": False},
        "model": {"cache_dir": model_cache},
        "score": None,
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "stages": {"generate": {"batch_size": 4}, "llm": {"batch_size": 4}},
        "llm": {"model": {"uri": "builtin:tiny-lm", "cache_dir": model_cache}, "max_new_tokens": 8, **llm},
        "images_per_prompt": 2,
        "seed": 3,
    }


def test_the_llm_spec_checks_its_instruction_and_constraint() -> None:
    base = {"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}}
    spec = load_spec(raw={**base, "llm": {}})
    assert spec.llm is not None and spec.llm.model.uri == "builtin:shapes-lm"
    assert list(spec.pools()) == ["llm", "generate", "score"] and spec.stage_hosts()["llm"] == "llm"
    assert "llm" not in load_spec(raw=base).pools()
    for bad, message in ((
        {"instruction": "no field"}, "must contain {prompt}"), ({"instruction": "{other}"}, "only the field"),
        ({"constraint": "(unclosed"}, "not a regular expression"), ({"variations": 101}, "less than or equal"),
    ):
        with pytest.raises(SpecError, match=message):
            load_spec(raw={**base, "llm": bad})


def test_preflight_checks_the_llm_model() -> None:
    from pipelines.preflight import ModelUnavailable, check_models, model_uris

    raw = {"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}, "score": None}
    spec = load_spec(raw={**raw, "llm": {"model": {"uri": "builtin:tiny-lm"}}})
    assert ("llm.model.uri", "builtin:tiny-lm") in [(key, uri) for key, uri, _ in model_uris(spec)]
    check_models(spec)
    with pytest.raises(ModelUnavailable, match="llm.model.uri: unknown built-in model 'no-such-lm'"):
        check_models(load_spec(raw={**raw, "llm": {"model": {"uri": "builtin:no-such-lm"}}}))


def _canonical(ids: list[str], seeds: list[int], statuses: list[str]) -> pa.Table:
    return pa.table({"id": ids, "seed": pa.array(seeds, pa.int64()), "status": statuses,
                     "image_index": pa.array([0] * len(ids), pa.int64()),
                     schema.IMAGES_PER_PROMPT_COLUMN: pa.array([2] * len(ids), pa.int64())})


def test_variations_fan_out_before_images() -> None:
    out = fan_out(_canonical(["a", "e"], [9, 4], ["ok", "error"]), enabled=True, variations=3).to_pylist()
    assert [row["id"] for row in out] == ["a/0/0", "a/0/1", "a/1/0", "a/1/1", "a/2/0", "a/2/1", "e"]
    for row in out[:6]:
        v, k = (int(part) for part in row["id"].split("/")[1:])
        assert row[schema.VARIATION_COLUMN] == v and row["image_index"] == k
        assert row[schema.LLM_SEED_COLUMN] == variation_seed(9, v)  # every image of a variation: one text
        assert row["seed"] == child_seed(variation_seed(9, v), k)
    assert variation_seed(9, 0) == 9 and len({variation_seed(9, v) for v in range(3)}) == 3
    assert out[6][schema.VARIATION_COLUMN] == 0 and out[6][schema.LLM_SEED_COLUMN] == 4  # an error record: one
    one = fan_out(_canonical(["a"], [9], ["ok"]), enabled=False, variations=1).to_pylist()
    assert [row["id"] for row in one] == ["a"] and one[0][schema.LLM_SEED_COLUMN] == 9
    plain = fan_out(_canonical(["a"], [9], ["ok"]), enabled=False)
    assert schema.LLM_SEED_COLUMN not in plain.column_names  # no LLM stage: no LLM columns


def _by_id(out: dict) -> dict[str, dict]:
    return {row["id"]: row for row in out["rows"]}


def test_variations_and_images_end_to_end(ray_session, tmp_path: Path, write_prompts, model_cache: str) -> None:
    prompts = write_prompts([*ROWS, {"id": "c", "prompt": ""}])  # an input error: one record, not fanned out
    spec: JobSpec = load_spec(raw=_raw(str(prompts), str(tmp_path / "one"), model_cache, variations=3))
    summary = run_job(spec, mode="overwrite")
    ids = [f"{row['id']}/{v}/{k}" for row in ROWS for v in range(3) for k in range(2)]
    assert summary.balanced and summary.input_rows == 13 and summary.images == 12 and summary.prompts == 3
    out = read_output(str(tmp_path / "one"))
    check_exactly_once(out, [*ids, "c"])
    rows = _by_id(out)
    assert rows["c"]["stage"] == "input" and rows["c"]["variation_index"] == 0 and rows["c"]["source_prompt"] == ""
    source = {row["id"]: row["prompt"] for row in ROWS}
    for row_id in ids:
        parent, v, k = row_id.split("/")
        row = rows[row_id]
        assert row["parent_id"] == parent and row["variation_index"] == int(v) and row["image_index"] == int(k)
        assert row["source_prompt"] == source[parent] and row["prompt"] and row["prompt"] != source[parent]
        assert row["prompt"] == rows[f"{parent}/{v}/0"]["prompt"]  # images of a variation share its text
        assert row["llm_seed"] == rows[f"{parent}/{v}/0"]["seed"] and row["llm_model"] == "builtin:tiny-lm"
        assert row["llm_s"] > 0
    for parent in source:
        assert len({rows[f"{parent}/{v}/0"]["prompt"] for v in range(3)}) == 3  # variations differ
    texts = {sample["json"]["id"]: sample["txt"] for sample in out["samples"]}
    assert all(texts[row_id] == rows[row_id]["prompt"] for row_id in ids)  # the image was drawn from the LLM text

    again = run_job(load_spec(raw=_raw(str(prompts), str(tmp_path / "two"), model_cache, variations=3)),
                    mode="overwrite")
    assert again.images == 12
    rerun = _by_id(read_output(str(tmp_path / "two")))
    assert {i: (r["prompt"], r["sha256"]) for i, r in rerun.items()} == {
        i: (r["prompt"], r["sha256"]) for i, r in rows.items()}  # same texts, same images

    resumed = run_job(spec, mode="resume")
    assert resumed.skipped == 13 and resumed.images == 0 and resumed.balanced
    assert read_output(str(tmp_path / "one"))["stats"] == out["stats"]  # nothing new was written


def test_a_constraint_no_text_meets_makes_error_records(
    ray_session, tmp_path: Path, write_prompts, model_cache: str
) -> None:
    prompts = write_prompts(ROWS)
    raw = _raw(str(prompts), str(tmp_path / "out"), model_cache, constraint="[0-9]+", retries=1)
    summary = run_job(load_spec(raw={**raw, "images_per_prompt": 1}), mode="overwrite")
    assert summary.balanced and summary.images == 0 and summary.errors == 2
    out = read_output(str(tmp_path / "out"))
    check_exactly_once(out, ["a", "b"])
    for record in out["errors"]:
        assert record["stage"] == "llm" and "does not match llm.constraint" in record["error"]
        assert "(2 draws)" in record["error"]
        assert record["prompt"] == record["source_prompt"]  # the prompt as read

    # retry-errors without the constraint: the LLM starts again from the prompt as read, with the record's seed
    del raw["llm"]["constraint"]
    retried = retry_errors(load_spec(raw={**raw, "images_per_prompt": 1}))
    assert retried.input_rows == 2 and retried.images == 2 and retried.balanced
    again = read_output(str(tmp_path / "out"))
    check_exactly_once(again, ["a", "b"])
    seeds = {record["id"]: record["llm_seed"] for record in out["errors"]}
    source = {row["id"]: row["prompt"] for row in ROWS}
    for sample in again["samples"]:
        row = sample["json"]
        assert row["source_prompt"] == source[row["id"]] and row["prompt"] not in ("", source[row["id"]])
        assert row["llm_seed"] == seeds[row["id"]] and row["variation_index"] == 0


def test_the_llm_settings_are_part_of_the_resume_fingerprint() -> None:
    from pipelines.fingerprint import settings_of

    raw = {"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}, "score": None}
    plain = settings_of(load_spec(raw=raw))
    assert not any(key.startswith("llm") for key in plain)  # earlier outputs keep their settings
    settings = settings_of(load_spec(raw={**raw, "llm": {"model": {"uri": "builtin:tiny-lm"}, "variations": 2}}))
    assert settings["llm.model.hash"] == "tiny-lm" and settings["llm.variations"] == 2
    assert settings["llm.instruction"] == "{prompt}" and settings["stages.llm.micro_batch_size"] == 1
