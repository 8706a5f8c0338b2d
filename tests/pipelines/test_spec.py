"""Job spec validation: good specs load, bad ones name the offending key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.spec import JobSpec, SpecError, load_spec

GOOD = {"input": {"uri": "s3://bucket/prompts/"}, "output": {"uri": "s3://bucket/out/"}}


def _raw(**sections) -> dict:
    raw = {"input": dict(GOOD["input"]), "output": dict(GOOD["output"])}
    raw.update(sections)
    return raw


def test_minimal_spec_gets_defaults() -> None:
    spec = load_spec(raw=_raw())
    assert isinstance(spec, JobSpec)
    assert spec.model.uri == "builtin:shapes-sd"
    assert spec.score is not None and spec.score.model.uri == "builtin:shapes-clip"
    assert spec.output.samples_per_shard == 1000
    assert spec.stages.generate.concurrency == 1


def test_example_spec_is_valid() -> None:
    spec = load_spec(Path(__file__).parents[2] / "examples" / "demo.yaml")
    assert spec.input.uri.endswith("prompts.jsonl")


def test_auto_batch_sizes_of_generate() -> None:
    """``batch_size: auto`` = Ray hands AUTO_BATCH_SIZE rows, micro-batch searched up to them;
    ``micro_batch_size: auto`` searches up to the batch_size given (also through ``--set``)."""
    from pipelines.spec import AUTO_BATCH_SIZE

    auto = load_spec(raw=_raw(stages={"generate": {"batch_size": "auto"}})).stages.generate
    assert (auto.batch_size, auto.micro_batch_size, auto.auto_micro_batch) == (AUTO_BATCH_SIZE, AUTO_BATCH_SIZE, True)
    generate = load_spec(raw=_raw(), sets=["stages.generate.micro_batch_size=auto",
                                           "stages.generate.batch_size=16"]).stages.generate
    assert (generate.batch_size, generate.micro_batch_size, generate.auto_micro_batch) == (16, 16, True)
    assert not load_spec(raw=_raw()).stages.generate.auto_micro_batch
    # a dumped spec (``_run.json``'s ``spec``) loads back to the same setting
    dumped = load_spec(raw=_raw(stages={"generate": {"batch_size": "auto"}})).model_dump(mode="json")
    assert JobSpec.model_validate(dumped).stages.generate == auto


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        (_raw(outptu={"uri": "x"}), "outptu", "unknown key"),
        (_raw(stages={"generate": {"batch_size": -4}}), "stages.generate.batch_size", "greater than 0"),
        (_raw(stages={"encode": {"batch_size": "many"}}), "stages.encode.batch_size", "valid integer"),
        (_raw(stages={"encode": {"concurrency": [4, 2]}}), "stages.encode.concurrency", "larger than max"),
        (_raw(stages={"encode": {"num_gpus": -0.5}}), "stages.encode.num_gpus", "greater than or equal to 0"),
        # fused (the default), encode has no pool: its pool keys would be silently ignored
        (_raw(stages={"encode": {"num_gpus": 0.5}}), "(root)", "placement.fuse_encode_generate is true"),
        (_raw(defaults={"width": 100}), "defaults.width", "multiple of 8"),
        (_raw(output={"uri": "o", "image_format": "gif"}), "output.image_format", "'png'"),
        ({"output": {"uri": "o"}}, "input", "required key is missing"),
        (_raw(input={"uri": ""}), "input.uri", "at least 1 character"),
        (_raw(input={"uri": "a", "columns": {"promt": "text"}}), "input.columns.promt", "unknown key"),
        # micro_batch_size: auto is generate's alone; batch_size: auto searches, so no fixed micro-batch with it
        (_raw(stages={"score": {"micro_batch_size": "auto"}}), "stages", "stages.score.micro_batch_size: auto"),
        (_raw(stages={"generate": {"batch_size": "auto", "micro_batch_size": 2}}), "stages.generate",
         "leave micro_batch_size out"),
        (_raw(stages={"generate": {"micro_batch_size": "several"}}), "stages.generate.micro_batch_size",
         "valid integer"),
    ],
)
def test_bad_spec_names_the_key(raw: dict, key: str, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(raw=raw)
    message = str(caught.value)
    assert f"{key}:" in message
    assert reason in message


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("input: {uri: a.jsonl}\noutput: {uri: out/2026-11-27}\nstages: {generate: {batch_size: 2}}\n")
    spec = load_spec(
        path,
        sets=["stages.generate.batch_size=16", "stages.encode.concurrency=[1, 3]", "output.uri=out/2026-11-28",
              "placement.fuse_encode_generate=false"],
        input_uri="s3://b/in.parquet",
        limit=5,
    )
    assert spec.stages.generate.batch_size == 16
    assert spec.stages.encode.concurrency == (1, 3)
    assert spec.output.uri == "out/2026-11-28"
    assert spec.input.uri == "s3://b/in.parquet"
    assert spec.limit == 5


def test_set_keeps_dates_as_text() -> None:
    spec = load_spec(raw=_raw(), sets=["output.uri=2026-11-28"])
    assert spec.output.uri == "2026-11-28"


def test_bad_set_syntax_is_an_error() -> None:
    with pytest.raises(SpecError, match="dotted.key=value"):
        load_spec(raw=_raw(), sets=["stages.generate.batch_size"])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


@pytest.mark.slow
def test_validate_command_does_not_import_torch_or_ray(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("input: {uri: a.jsonl}\noutput: {uri: out}\n")
    code = (
        f"import sys; from pipelines.cli import main; rc = main(['validate', {str(path)!r}]); "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def test_validate_command_reports_bad_key(tmp_path: Path) -> None:
    from pipelines.cli import main

    path = tmp_path / "job.yaml"
    path.write_text("input: {uri: a.jsonl}\noutput: {uri: out, samples_per_shard: 0}\n")
    assert main(["validate", str(path)]) == 2


def test_the_readmes_spec_reference_is_a_valid_spec() -> None:
    """The README's "Job spec reference" block, as written, validates; and it names every top-level key."""
    import re

    import yaml

    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("## Job spec reference"):]
    block = re.search(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    raw = yaml.safe_load(block.group(1))
    load_spec(raw=raw)
    assert set(raw) == set(JobSpec.model_fields) - {"generate", "style"}, "keys missing from the reference"


def test_a_grid_must_hold_what_the_templates_read_and_a_prompt() -> None:
    base = {"output": {"uri": "out"}}
    with pytest.raises(SpecError, match="prompt_template: column 'shape' is not a key of input.grid"):
        load_spec(raw={**base, "input": {"grid": {"colour": ["red"]}}, "prompt_template": "a {colour} {shape}"})
    with pytest.raises(SpecError, match="input.grid has no 'prompt' key and there is no prompt_template"):
        load_spec(raw={**base, "input": {"grid": {"colour": ["red"]}}})
    assert load_spec(raw={**base, "input": {"grid": {"prompt": ["a red circle"]}}}).input.grid == {
        "prompt": ["a red circle"]}


def test_set_keeps_text_that_yaml_cannot_read_as_typed() -> None:
    raw = {"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}}
    spec = load_spec(raw=raw, sets=["llm.constraint=[a-z ,]+", "llm.instruction={prompt}",
                                    "prompt_template={colour} thing", "stages.generate.concurrency=[1, 2]"])
    assert spec.llm is not None and spec.llm.constraint == "[a-z ,]+" and spec.llm.instruction == "{prompt}"
    assert spec.prompt_template == "{colour} thing" and spec.stages.generate.concurrency == (1, 2)
    with pytest.raises(SpecError, match="llm.constraint"):
        load_spec(raw={**raw, "llm": {"constraint": ""}})
