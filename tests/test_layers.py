"""The import layers of pyproject's import-linter contracts name every module of pipelines/."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_pipelines_module_is_in_a_layer() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {part.strip() for layer in layers for part in layer.replace("|", ":").split(":")}
    modules = {f"pipelines.{path.stem}" for path in (ROOT / "pipelines").glob("*.py") if path.stem != "__init__"}
    assert modules <= named, f"add these to a layer in pyproject.toml: {sorted(modules - named)}"
    assert {"actors", "models", "training"} <= named
