"""The layers of ``models``: what a run loads, importing nothing above it and no module of it twice round.

Every import is counted, the ones inside functions too (a cycle hidden in a function is
still a cycle). ``models`` imports nothing from ``pipelines``, ``actors`` or ``training``
and no Ray.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "models"
FORBIDDEN = ("pipelines", "actors", "training", "ray")


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (``from models import x`` -> ``models.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    """``models.x -> {models.y, ...}``: the imports between the modules of ``models``."""
    modules = {f"models.{path.stem}": path for path in MODELS.glob("*.py") if path.stem != "__init__"}
    return {name: _imported_modules(path) & set(modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path, or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*trail[trail.index(target):], target] if target in trail else [node, target]
            if target not in state and (found := visit(target, [*trail, target])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_among_models_modules() -> None:
    graph = _graph()
    assert {"models.diffusion", "models.gan", "models.families", "models.backends"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_models_imports_nothing_above_it() -> None:
    for path in sorted(MODELS.glob("*.py")):
        above = {name for name in _imported_modules(path) if name.split(".")[0] in FORBIDDEN}
        assert not above, f"{path.name} imports {sorted(above)}"


def test_the_backend_registry_is_light_and_names_the_gan_class() -> None:
    code = (
        "import sys, models.backends as b; assert 'torch' not in sys.modules, 'torch';"
        "print(b.GENERATE_BACKENDS['gan'].model_classes[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=MODELS.parent, check=True)
    source = (MODELS / "gan.py").read_text(encoding="utf-8")
    assert f'GAN_CLASS_NAME = "{out.stdout.strip()}"' in source
