"""Where the regenerate loop runs (``pipelines.plan``), the README's example spec, and the resume fingerprint."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from actors.encode import EncodeStage
from actors.generate import GenerateStage
from actors.regenerate import RegenerateStage
from actors.score import ScoreStage
from pipelines.fingerprint import settings_of
from pipelines.images import encode_images
from pipelines.pools import placed_stages as _placed_stages
from pipelines.rows import attempt_seed
from pipelines.spec import JobSpec, load_spec

README = Path(__file__).parents[2] / "README.md"


def _readme_spec(tmp_path: Path, *sets: str) -> JobSpec:
    """The README's regenerate example (the YAML block that sets ``max_attempts``), as a validated spec."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    example = next(block for block in blocks if "max_attempts: 4" in block and block.startswith("# regenerate.yaml"))
    raw = yaml.safe_load(example)
    raw["model"] = {"cache_dir": str(tmp_path)}
    return load_spec(raw=raw, sets=list(sets))


def test_readme_example_runs_the_loop_in_the_generate_pool(tmp_path: Path) -> None:
    spec = _readme_spec(tmp_path)
    assert spec.regenerates and spec.score is not None and spec.score.max_attempts == 4
    assert list(spec.pools()) == ["generate"] and spec.stage_hosts()["score"] == "generate"
    (loop_class, kwargs, resources), = _placed_stages(spec)
    assert loop_class is RegenerateStage and resources == spec.stages.generate
    assert [step for step, _ in kwargs["before"]] == [EncodeStage]
    assert [step for step, _ in kwargs["attempt"]] == [GenerateStage, ScoreStage]
    assert kwargs["after"] == [] and kwargs["seed_of"] is attempt_seed and kwargs["score"] == spec.score


def test_encode_pool_and_image_encoding_around_the_loop(tmp_path: Path) -> None:
    spec = _readme_spec(tmp_path, "placement.fuse_encode_generate=false", "placement.encode_images=last_stage")
    (encode, _, encode_resources), (loop_class, kwargs, _) = _placed_stages(spec)
    assert encode is EncodeStage and encode_resources == spec.stages.encode
    assert loop_class is RegenerateStage and kwargs["before"] == []
    assert [step for step, _ in kwargs["after"]] == [encode_images]
    # the score stage runs on the generate actors' device
    score_kwargs = dict(kwargs["attempt"])[ScoreStage]
    assert score_kwargs["stage"].num_gpus == spec.stages.generate.num_gpus


def test_one_attempt_keeps_the_plain_score_pool_and_fingerprint(tmp_path: Path) -> None:
    spec = _readme_spec(tmp_path, "score.max_attempts=1")
    assert not spec.regenerates
    assert [cls for cls, _, _ in _placed_stages(spec)][-1] is ScoreStage
    settings = settings_of(spec)
    assert "score.max_attempts" not in settings and "score.keep" not in settings  # earlier outputs still resume
    looped = settings_of(_readme_spec(tmp_path, "score.keep=best"))
    assert looped["score.max_attempts"] == 4 and looped["score.keep"] == "best"
