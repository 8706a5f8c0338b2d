"""Prompt templates and ``input.grid`` end to end on real parts: local Ray, the built-in model, local folders.

A grid + template job with two images per prompt (ids, prompts, pass-through values, exactly once,
a resume that does nothing new, a changed template refused); a file input whose empty value is
that row's error record; a template column the input lacks stops the job before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.cli import main
from pipelines.grid import grid_id
from pipelines.runner import PreflightError, run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output


def _raw(input_spec: dict[str, Any], output_uri: str, model_cache: str, **extra: Any) -> dict[str, Any]:
    return {
        "input": input_spec,
        "output": {"uri": output_uri, "samples_per_shard": 4, "report": False},
        "model": {"cache_dir": model_cache},
        "score": None,
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "stages": {"encode": {"batch_size": 4}, "generate": {"batch_size": 4}},
        "seed": 5,
        **extra,
    }


def test_grid_with_templates_two_images_each_then_resume(ray_session, tmp_path: Path, model_cache: str) -> None:
    grid = {"shape": ["circle", "square"], "colour": ["red", "blue green"], "size": [2]}
    out_uri = str(tmp_path / "out")
    raw = _raw({"grid": grid}, out_uri, model_cache, images_per_prompt=2,
               prompt_template="a {colour} {shape}, size {size}", negative_prompt_template="a {shape} drawn badly")
    summary = run_job(load_spec(raw=raw), mode="overwrite")
    assert summary.balanced and summary.input_rows == 8 and summary.images == 8 and summary.prompts == 4

    out = read_output(out_uri)
    parents = [grid_id({"shape": s, "colour": c, "size": 2}) for s in grid["shape"] for c in grid["colour"]]
    assert parents[1] == "shape=circle/colour=blue%20green/size=2"
    check_exactly_once(out, [f"{parent}/{k}" for parent in parents for k in range(2)])
    samples = {s["json"]["id"]: s for s in out["samples"]}
    one = samples["shape=circle/colour=blue%20green/size=2/1"]
    assert one["json"]["prompt"] == one["txt"] == "a blue green circle, size 2"
    assert one["json"]["negative_prompt"] == "a circle drawn badly"
    assert (one["json"]["parent_id"], one["json"]["image_index"]) == (parents[1], 1)
    rows = {row["id"]: row for row in out["rows"]}
    assert (rows[parents[0] + "/0"]["shape"], rows[parents[0] + "/0"]["colour"]) == ("circle", "red")
    assert {row["source"] for row in out["rows"]} == {"input.grid"}
    assert out["run"]["settings"]["prompt_template"] == "a {colour} {shape}, size {size}"

    again = run_job(load_spec(raw=raw), mode="resume")
    assert again.balanced and again.skipped == 8 and again.images == 0 and again.input_rows == 8
    check_exactly_once(read_output(out_uri), [f"{parent}/{k}" for parent in parents for k in range(2)])

    with pytest.raises(PreflightError, match="prompt_template"):  # a changed template is a changed spec
        run_job(load_spec(raw={**raw, "prompt_template": "a {shape}, {colour}, size {size}"}), mode="resume")


def test_file_input_with_a_template_and_an_empty_value(
    ray_session, tmp_path: Path, write_prompts, model_cache: str
) -> None:
    rows = [{"id": "a", "shape": "circle", "colour": "red", "n": 3},
            {"id": "b", "shape": "square", "colour": "", "n": 4},
            {"id": "c", "shape": "star", "colour": "blue", "n": 2.5, "prompt": "ignored: the template wins"}]
    prompts = write_prompts(rows)
    out_uri = str(tmp_path / "out")
    raw = _raw({"uri": str(prompts)}, out_uri, model_cache, prompt_template="{n} {colour} {shape}s")
    summary = run_job(load_spec(raw=raw), mode="overwrite")
    assert summary.balanced and summary.images == 2 and summary.errors == 1

    out = read_output(out_uri)
    check_exactly_once(out, ["a", "b", "c"])
    assert {s["json"]["id"]: s["json"]["prompt"] for s in out["samples"]} == {"a": "3 red circles",
                                                                                "c": "2.5 blue stars"}
    (record,) = out["errors"]
    assert (record["id"], record["stage"]) == ("b", "input")
    assert record["error"] == "prompt_template: column 'colour' is empty in this row"

    # retry-errors (the spec recorded in _run.json): the template fills the record again, from its columns
    assert main(["retry-errors", out_uri, "--min-success-rate", "0"]) == 0
    again = read_output(out_uri)
    check_exactly_once(again, ["a", "b", "c"])
    assert [(r["id"], r["error"]) for r in again["errors"]] == [("b", record["error"])]
    assert again["run"]["input_rows"] == 1 and again["run"]["balanced"]


def test_a_template_column_the_input_lacks_stops_the_job_first(
    ray_session, tmp_path: Path, write_prompts, model_cache: str
) -> None:
    prompts = write_prompts([{"id": "a", "shape": "circle"}])
    out = tmp_path / "out"
    raw = _raw({"uri": str(prompts)}, str(out), model_cache, negative_prompt_template="{shape} in {texture}",
               prompt_template="a {shape}")
    with pytest.raises(PreflightError, match=r"negative_prompt_template: column 'texture' is not in the input"):
        run_job(load_spec(raw=raw), mode="overwrite")
    assert not out.exists() or not any(out.iterdir())  # nothing was written
