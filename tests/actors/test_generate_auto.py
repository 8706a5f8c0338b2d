"""The generate stage with ``micro_batch_size: auto`` on the real shapes-sd model, called the way Ray
calls it, with CUDA-style out-of-memory errors injected through ``pipelines.faults``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from actors.encode import EncodeStage
from actors.fused import FusedStage
from actors.generate import GenerateStage
from pipelines import faults, schema
from pipelines.spec import ModelSpec, StageSpec
from tests.actors.test_regenerate import _batch

PROMPTS = [f"a red circle on blue, number {i}" for i in range(6)]


def _run(model: ModelSpec, generate: StageSpec, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    fused = FusedStage(steps=[(EncodeStage, {"model": model, "stage": StageSpec(micro_batch_size=2)}),
                              (GenerateStage, {"model": model, "stage": generate})])
    return fused({name: column.copy() for name, column in batch.items()})


def test_auto_records_its_micro_batch_and_keeps_micro_batch_one_bytes(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ModelSpec(uri="builtin:shapes-sd", cache_dir=str(tmp_path / "cache"))
    batch = _batch(PROMPTS, ["ok"] * 5 + ["error"])
    batch[schema.GUIDANCE][3:] = 3.0  # two shapes: guidance 1 and guidance 3
    reference = _run(model, StageSpec(micro_batch_size=1), batch)
    assert list(reference[schema.MICRO_BATCH]) == [1, 1, 1, 1, 1, 0]  # 0: the row drew no image

    rule = {"at": "generate:micro_batch", "do": "oom", "rows_above": 2}
    monkeypatch.setenv(faults.ENV_VAR, json.dumps([rule]))
    faults._rules.cache_clear()
    try:
        auto = _run(model, StageSpec.model_validate({"batch_size": 8, "micro_batch_size": "auto"}), batch)
    finally:
        monkeypatch.delenv(faults.ENV_VAR)
        faults._rules.cache_clear()
    assert list(auto[schema.STATUS]) == list(reference[schema.STATUS])  # no out-of-memory error became a row error
    assert all(1 <= size <= 2 for size in auto[schema.MICRO_BATCH][:5]) and auto[schema.MICRO_BATCH][5] == 0
    for i in range(5):
        assert auto[schema.IMAGE_COLUMN][i].tobytes() == reference[schema.IMAGE_COLUMN][i].tobytes()
