"""``bench/gpu_stage.py`` drives the plan's own generate pool without Ray (its numbers are never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from actors.encode import EncodeStage
from actors.generate import GenerateStage
from bench.gpu_stage import job_spec, numpy_batches, plan_rows
from pipelines import schema
from pipelines.images import encode_images
from pipelines.pools import placed_stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the GPU machine lacks: the script must run with none of them importable.
ABSENT = ("ray", "moto", "s3fs", "boto3", "botocore")


def test_the_script_feeds_the_plans_generate_pool_the_batches_ray_would(tmp_path) -> None:
    from ray.data.block import BlockAccessor  # the conversion only: no Ray session starts

    spec = job_spec(str(tmp_path / "model"), tiny_vae=None, batch=4, size=64, image_format="jpg",
                    encode_images_at="last_stage", gpu=False)
    (pool, kwargs, resources), = placed_stages(spec)  # score: None, so the generate pool is the only pool
    assert [step for step, _ in kwargs["steps"]] == [EncodeStage, GenerateStage, encode_images]
    assert resources == spec.stages.generate and kwargs["steps"][1][1]["stage"].micro_batch_size == 4
    rows = plan_rows(spec, 10)
    ours = numpy_batches(rows, 4)
    assert [len(batch["id"]) for batch in ours] == [4, 4, 2]
    for lo, batch in zip(range(0, 10, 4), ours, strict=True):
        rays = BlockAccessor.for_block(rows.slice(lo, 4)).to_batch_format("numpy")
        assert list(batch) == list(rays)
        for name, column in rays.items():
            assert batch[name].dtype == column.dtype, name
            assert all(a == b or (a != a and b != b) for a, b in zip(batch[name], column, strict=True)), name
    first = ours[0]
    assert np.all(first[schema.WIDTH] == 64) and np.all(first[schema.STEPS] == 1)
    assert first[schema.SEED][0] != first[schema.SEED][1]  # seeds derived per row id, as in a run


@pytest.mark.slow
def test_smoke_run_measures_the_pool_against_the_bare_loop_without_ray(tmp_path) -> None:
    out, bench_json = tmp_path / "gpu_stage.json", tmp_path / "gpu_bench.json"
    bench_json.write_text(json.dumps({"sweeps": {"b": {"2": 5.0}, "c": {"2": 10.0}}}))  # a gpu_sd_turbo.py result
    argv = ["bench/gpu_stage.py", "--smoke", "--configs", "vae:jpg,tiny:png:task", "--bench-json", str(bench_json),
            "--out", str(out)]
    script = (f"import runpy, sys; sys.modules.update(dict.fromkeys({ABSENT!r})); sys.argv = {argv!r}; "
              "runpy.run_path('bench/gpu_stage.py', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "efficiency = stage / bare" in done.stdout
    result = json.loads(out.read_text())
    assert result["finished"] and set(result["configs"]) == {"vae:jpg", "tiny:png:task"}
    assert result["bare"]["vae"]["bench_json"] == 5.0 and result["bare"]["tiny"]["bench_json"] == 10.0
    for config, row in result["configs"].items():
        assert row["rows"] == 16 and row["statuses"] == {"ok": 16} and not row["capped"], config
        assert row["images_per_s"] > 0 and row["efficiency"] > 0, config
        assert row["efficiency_vs_bench_json"] == pytest.approx(
            row["images_per_s"] / result["bare"][row["vae"]]["bench_json"]), config
        assert row["busy_s"]["encode"] > 0 and row["busy_s"]["generate"] > 0 and row["busy_s"]["image_encode"] > 0
        assert row["fp32_decode_retries"] == 0
    assert result["configs"]["tiny:png:task"]["encode_images"] == "task"
