"""What a user types, run as they would type it (``python -m pipelines.cli`` in a subprocess, as the
``pixelmill`` script runs it): ``--version``, a run from flags alone with its progress lines and no
Ray noise, a CSV whose prompt column has another name, the report's scores, the CPU install pin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

from tests.pipelines.readback import read_output
from tests.pipelines.test_report import write_output

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle on a blue background", "a small green square", "a yellow triangle at the top"]


def _pixelmill(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_version(tmp_path):
    result = _pixelmill("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pixelmill {version('pixelmill')}"


def test_run_from_flags_alone_shows_pixelmills_progress_only(tmp_path):
    (tmp_path / "prompts.jsonl").write_text("".join(f'{{"prompt": "{p}"}}\n' for p in PROMPTS))
    result = _pixelmill("run", "--input", "prompts.jsonl", "--output", "out/", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = read_output(str(tmp_path / "out"))
    assert sorted(row["prompt"] for row in out["rows"]) == sorted(PROMPTS)
    assert len(out["samples"]) == 3 and out["run"]["balanced"]
    # pixelmill's progress: a first line (the total shows "?" until the counting passes, which run beside
    # the work, answer), a last one at the end with the total
    assert re.search(r"pixelmill: 0/(3|\?) rows, 0\.0 images/s, 0 errors, ETA \?", result.stderr)
    assert re.search(r"pixelmill: 3/3 rows, \d+\.\d+ images/s, 0 errors, ETA 0s", result.stderr)
    # and nothing of Ray Data's own display or deprecation notices
    for noise in ("Total Progress", "logging_progress", "RayDeprecationWarning", "ray_remote_args",
                  "Execution plan of Dataset", "Progress bars disabled", "Using categorical units"):
        assert noise not in result.stderr, noise


def test_prompt_column_named_otherwise_stops_before_ray_with_the_mapping(tmp_path):
    (tmp_path / "prompts.csv").write_text("text,campaign\na red circle,spring\na green square,fall\n")
    started = time.monotonic()
    result = _pixelmill("run", "--input", "prompts.csv", "--output", "out/", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert "--set input.columns.prompt=text" in result.stderr
    assert "column 'prompt' not in the input" in result.stderr
    assert "Started a local Ray instance" not in result.stderr
    assert not (tmp_path / "out").exists()  # stopped before the output was even probed
    assert elapsed < 45, elapsed  # Ray's start alone took ~20-30 s on a 2-core machine
    # the mapping it names works
    check = _pixelmill("validate", "--input", "prompts.csv", "--output", "out/", "--set", "input.columns.prompt=text",
                       cwd=tmp_path)
    assert check.returncode == 0, check.stderr


def test_spec_or_input_and_output_required(tmp_path):
    result = _pixelmill("run", "--input", "prompts.jsonl", cwd=tmp_path)
    assert result.returncode == 2
    assert "needs a job YAML, or --input and --output" in result.stderr


def test_report_scores_have_one_format(tmp_path):
    out = tmp_path / "out"
    write_output(str(out), scores=True)  # whole-number scores (20.0, 23.0, ...) beside a fractional mean
    result = _pixelmill("report", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    html = (out / "report.html").read_text()
    shown = re.findall(r"score (\S+)<", html) + re.findall(r"(?:mean|min|max) ([0-9.]+)[,.]", html)
    assert len(shown) >= 4, shown
    assert all(re.fullmatch(r"\d+\.\d\d", value) for value in shown), shown


def test_cpu_install_pin_exists_and_matches():
    """``scripts/setup.sh`` (the CPU install path) installs requirements-cpu.txt, which pins torch."""
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "-r requirements-cpu.txt" in setup
    pins = (REPO / "requirements-cpu.txt").read_text().split()
    assert "torch==2.13.0" in pins
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile  # the GPU image installs the same version
    pyproject = (REPO / "pyproject.toml").read_text()
    assert "requirements-cpu.txt" in pyproject
    assert any(dep.startswith("tqdm") for dep in tomllib.loads(pyproject)["project"]["dependencies"])
