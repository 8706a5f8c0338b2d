"""Stage placement (``placement`` in the spec) changes where work runs, never what is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.pools import placed_stages as _placed_stages
from pipelines.runner import run_job
from pipelines.spec import load_spec
from tests.pipelines.readback import check_exactly_once, read_output

ROWS = [{"id": f"p{i}", "prompt": f"a small red circle on the left, blue background {i}"} for i in range(6)]
ROWS.append({"id": "bad", "prompt": ""})


def _spec(source: Path, out: Path, model_cache: str, **placement):
    return load_spec(raw={
        "input": {"uri": str(source)},
        "output": {"uri": str(out), "samples_per_shard": 4, "report": False},
        "model": {"cache_dir": model_cache},
        "score": {"model": {"cache_dir": model_cache}},
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "stages": {"generate": {"batch_size": 4}},
        "placement": placement,
    })


def test_pools_follow_the_placement(tmp_path: Path) -> None:
    default = _placed_stages(_spec(tmp_path / "in.jsonl", tmp_path / "o", "/tmp/c"))
    assert [cls.__name__ for cls, _, _ in default] == ["FusedStage", "ScoreStage"]  # bench.placement's winner
    separate = _placed_stages(_spec(tmp_path / "in.jsonl", tmp_path / "o", "/tmp/c", fuse_encode_generate=False))
    assert [cls.__name__ for cls, _, _ in separate] == ["EncodeStage", "GenerateStage", "ScoreStage"]
    fused = _placed_stages(_spec(tmp_path / "in.jsonl", tmp_path / "o", "/tmp/c",
                                 fuse_encode_generate=True, encode_images="last_stage"))
    assert [cls.__name__ for cls, _, _ in fused] == ["FusedStage", "FusedStage"]
    (_, first, first_resources), (_, last, _) = fused
    assert [step.__name__ for step, _ in first["steps"]] == ["EncodeStage", "GenerateStage"]
    assert first_resources.batch_size == 4  # the fused pool takes the generate stage's resources
    assert [step.__name__ for step, _ in last["steps"]] == ["ScoreStage", "encode_images"]


def test_fused_encoder_shares_the_generate_device(tmp_path: Path) -> None:
    spec = load_spec(raw={"input": {"uri": "in.jsonl"}, "output": {"uri": "o"},
                          "stages": {"generate": {"num_gpus": 1}}})
    (_, fused, resources), _ = _placed_stages(spec)
    (_, encode_kwargs), _ = fused["steps"]
    assert resources.num_gpus == 1 and encode_kwargs["stage"].resolved_device() == "cuda"
    separate = load_spec(raw={"input": {"uri": "in.jsonl"}, "output": {"uri": "o"},
                              "stages": {"generate": {"num_gpus": 1}}, "placement": {"fuse_encode_generate": False}})
    (_, encode_kwargs, _), *_ = _placed_stages(separate)
    assert encode_kwargs["stage"].resolved_device() == "cpu"  # its own pool, no GPU asked for


@pytest.mark.parametrize("placement", [{"fuse_encode_generate": True, "encode_images": "last_stage"}])
def test_fused_placement_writes_the_same_bytes(
    ray_session, write_prompts, tmp_path: Path, model_cache: str, placement: dict
) -> None:
    source = write_prompts(ROWS, "prompts.jsonl")
    outputs = {}
    for name, chosen in (("separate", {"fuse_encode_generate": False, "encode_images": "task"}), ("placed", placement)):
        summary = run_job(_spec(source, tmp_path / name, model_cache, **chosen), mode="overwrite")
        assert (summary.images, summary.errors) == (6, 1) and summary.balanced
        out = read_output(str(tmp_path / name))
        check_exactly_once(out, [row["id"] for row in ROWS])
        outputs[name] = {row["id"]: (row["sha256"], row["clip_score"]) for row in out["rows"] if row["status"] == "ok"}
    assert outputs["placed"] == outputs["separate"]
