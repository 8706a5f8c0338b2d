"""The stage contract (``actors.base.Stage``): its shared ``__call__``, with a toy stage and the real ones, no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from actors.base import Stage
from actors.encode import EncodeStage
from actors.fused import FusedStage
from actors.generate import GenerateStage
from actors.llm import LlmStage
from actors.score import ScoreStage
from actors.style import StyleStage
from pipelines import faults, schema
from pipelines.images import ImageEncodeStage, encode_images
from pipelines.schema import IMAGE_COLUMN, StageColumns, Status
from pipelines.spec import ModelSpec, ScoreSpec, StageSpec

POISON = "poison"


class Shout(Stage):
    """Upper-cases prompts; raises on the whole call when any row's prompt contains ``POISON``."""

    contract = StageColumns("shout", adds=("shouted",))

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def compute(self, batch, rows):
        self.calls.append(list(rows))
        if any(POISON in str(batch["prompt"][i]) for i in rows):
            raise ValueError("poisoned prompt")
        return [str(batch["prompt"][i]).upper() for i in rows]

    def finish(self, batch, results):
        batch["shouted"] = np.array([results.get(i, "") for i in range(len(batch["status"]))], dtype=object)


def _batch(prompts: list[str], statuses: list[str] | None = None) -> dict[str, np.ndarray]:
    statuses = statuses or ["ok"] * len(prompts)
    return {
        "prompt": np.array(prompts, dtype=object),
        "status": np.array(statuses, dtype=object),
        "stage": np.array(["" if s == "ok" else "input" for s in statuses], dtype=object),
        "error": np.array(["" if s == "ok" else "earlier" for s in statuses], dtype=object),
    }


def test_timing_column_and_results_for_every_row() -> None:
    out = Shout()(_batch(["a", "b", "c"], ["ok", "error", "ok"]))
    assert list(out["shouted"]) == ["A", "", "C"]
    assert out["shout_s"].shape == (3,) and out["shout_s"].dtype == np.float64 and (out["shout_s"] >= 0).all()
    assert list(out["status"]) == ["ok", "error", "ok"]
    assert list(out["stage"]) == ["", "input", ""]  # a row failed earlier keeps its stage and error
    assert list(out["error"]) == ["", "earlier", ""]


def test_only_ok_rows_are_computed() -> None:
    stage = Shout()
    stage(_batch(["a", "b", "c", "d"], ["ok", "error", "filtered", "ok"]))
    assert stage.calls == [[0, 3]]


def test_raising_row_is_isolated_by_bisection_and_marked_with_its_stage() -> None:
    stage = Shout()
    prompts = ["a", "b", f"c {POISON}", "d", "e"]
    out = stage(_batch(prompts))
    assert list(out["status"]) == ["ok", "ok", "error", "ok", "ok"]
    assert out["stage"][2] == "shout" and out["error"][2] == "ValueError: poisoned prompt"
    assert list(out["shouted"]) == ["A", "B", "", "D", "E"]  # healthy rows untouched by the failure
    assert [list(map(str, out[c][[0, 1, 3, 4]])) for c in ("stage", "error")] == [[""] * 4, [""] * 4]
    assert stage.calls[0] == [0, 1, 2, 3, 4] and [2] in stage.calls  # whole batch first, then halves down to the row
    assert all(type(s) is str for s in out["status"])  # plain strings, not enum members, go to Parquet


def test_fault_hook_is_called_at_the_stage_point(monkeypatch: pytest.MonkeyPatch) -> None:
    points: list[tuple[str, list[str]]] = []
    monkeypatch.setattr("actors.base.inject", lambda point, prompts=None: points.append((point, prompts)))
    Shout()(_batch(["a", "b"], ["ok", "error"]))
    assert points == [("stage:shout", ["a"])]


def test_injected_fault_isolates_the_matching_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``pipelines.faults`` hook: a ``raise`` rule on one prompt fails only that row."""
    monkeypatch.setenv(faults.ENV_VAR, f'[{{"at": "stage:shout", "do": "raise", "prompt": "{POISON}-hook"}}]')
    faults._rules.cache_clear()
    try:
        out = Shout()(_batch(["a", f"b {POISON}-hook", "c"]))
    finally:
        monkeypatch.delenv(faults.ENV_VAR)
        faults._rules.cache_clear()
    assert list(out["status"]) == ["ok", "error", "ok"]
    assert out["stage"][1] == "shout" and "injected fault at stage:shout" in out["error"][1]
    assert list(out["shouted"]) == ["A", "", "C"]


def test_select_groups_are_computed_apart() -> None:
    class ByLength(Shout):
        def select(self, batch):
            groups: dict[int, list[int]] = {}
            for i in range(len(batch["prompt"])):
                groups.setdefault(len(batch["prompt"][i]), []).append(i)
            return list(groups.values())

    stage = ByLength()
    out = stage(_batch(["a", "bb", "c", "dd"]))
    assert stage.calls == [[0, 2], [1, 3]]
    assert list(out["shouted"]) == ["A", "BB", "C", "DD"]


def test_every_stage_declares_a_contract_from_the_schema() -> None:
    stages = [LlmStage, EncodeStage, GenerateStage, StyleStage, ScoreStage, ImageEncodeStage]
    assert [cls.contract for cls in stages] == list(schema.STAGES)
    assert all(issubclass(cls, Stage) for cls in stages)
    assert "score_s" in schema.STAGE_SECONDS
    assert [c.seconds for c in schema.STAGES] == list(schema.STAGE_SECONDS)


def test_image_encoding_stage_adds_its_columns_and_isolates_bad_images() -> None:
    batch = _batch(["a", "b", "c"], ["ok", "ok", "error"])
    images = np.empty(3, dtype=object)
    images[0] = np.full((8, 8, 3), 200, np.uint8)
    images[1] = np.zeros((8, 8), np.float64)  # not an image Pillow can encode as RGB PNG from float
    images[2] = np.zeros((0, 0, 3), np.uint8)
    batch[IMAGE_COLUMN] = images
    out = encode_images(batch, image_format="png", quality=90)
    assert IMAGE_COLUMN not in out
    assert set(schema.IMAGE_ENCODE.adds) | {schema.IMAGE, "image_encode_s"} <= set(out)
    assert out["image"][0][:8] == b"\x89PNG\r\n\x1a\n" and len(out["sha256"][0]) == 64
    assert out["status"][1] == Status.ERROR and out["stage"][1] == "image_encode"
    assert (out["image"][1], out["sha256"][1]) == (b"", "")
    assert (out["image"][2], out["sha256"][2], out["stage"][2]) == (b"", "", "input")


def test_fused_stage_builds_stage_steps(tmp_path_factory: pytest.TempPathFactory) -> None:
    model = ModelSpec(uri="builtin:tiny-clip", cache_dir=str(tmp_path_factory.mktemp("clip-cache")))
    fused = FusedStage(steps=[(ScoreStage, {"score": ScoreSpec(model=model), "stage": StageSpec()}),
                              (encode_images, {"image_format": "png", "quality": 90})])
    assert fused.contracts == [schema.SCORE, schema.IMAGE_ENCODE]
    batch = _batch(["a red circle", "a blue square"])
    batch["seed"] = np.arange(2, dtype=np.int64)  # canonical rows carry their seed (the score stage records it)
    batch[IMAGE_COLUMN] = np.empty(2, dtype=object)
    for i in range(2):
        batch[IMAGE_COLUMN][i] = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = fused(batch)
    assert {"clip_score", "score_s", "image", "sha256", "image_encode_s"} <= set(out)
    assert list(out["status"]) == ["ok", "ok"]
