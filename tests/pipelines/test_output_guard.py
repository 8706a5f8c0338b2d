"""pixelmill never deletes a file it did not write, and never mixes input and output (issue 17, item 1).

The CLI runs as a user types it (a subprocess); the refusals happen before Ray starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.layout import OutputLayout
from pipelines.resume import check_mode, foreign_files


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _job(tmp_path: Path, source: Path, out: Path, model_cache: str) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({
        "input": {"uri": str(source)}, "output": {"uri": str(out), "samples_per_shard": 4, "report": False},
        "model": {"cache_dir": model_cache}, "score": None, "defaults": {"width": 32, "height": 32, "steps": 1},
        "ray": {"num_cpus": 4},
    }))
    return job


def test_overwrite_refuses_an_output_with_foreign_files_and_force_leaves_them(tmp_path: Path, model_cache: str) -> None:
    source, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    source.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "a red circle"}) + "\n" for i in range(2)))
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "data.csv").write_text("a,b\n")
    (out / "00000_stats.json").write_text("{}")  # looks like pixelmill's: it is, by name
    job = _job(tmp_path, source, out, model_cache)

    refused = _cli("run", str(job), "--mode", "overwrite", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "2 file(s) pixelmill did not write (notes.txt, sub/data.csv)" in refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert (out / "00000_stats.json").exists()  # nothing was touched

    forced = _cli("run", str(job), "--mode", "overwrite", "--force", "--min-success-rate", "0", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub" / "data.csv").read_text() == "a,b\n"
    assert json.loads((out / "_run.json").read_text())["images"] == 2


def test_an_input_inside_the_output_is_refused_in_every_mode(tmp_path: Path, model_cache: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    source = out / "prompts.jsonl"
    source.write_text(json.dumps({"prompt": "a red circle"}) + "\n")
    job = _job(tmp_path, source, out, model_cache)
    for mode in ("resume", "append", "overwrite"):
        result = _cli("run", str(job), "--mode", mode, "--force", cwd=tmp_path)
        assert result.returncode == 2 and "is inside the output" in result.stderr, (mode, result.stderr)
        assert source.exists() and sorted(p.name for p in out.iterdir()) == ["prompts.jsonl"]
    # an output inside an input folder: its shards would be read as prompts next time
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "p.jsonl").write_text(json.dumps({"prompt": "a red circle"}) + "\n")
    result = _cli("run", str(_job(tmp_path, folder, folder / "out", model_cache)), cwd=tmp_path)
    assert result.returncode == 2 and "is inside the input folder" in result.stderr
    assert not (folder / "out").exists()


def test_foreign_files_on_s3_block_an_overwrite(s3) -> None:
    for name in ("00000.tar", "00000_stats.json", "_run.json", "notes.txt", "README.md"):
        s3.pipe(f"pixelmill/guard/{name}", b"x")
    layout = OutputLayout("s3://pixelmill/guard")
    assert [p.rsplit("/", 1)[1] for p in foreign_files(layout)] == ["README.md", "notes.txt"]  # a user's card too
    with pytest.raises(FileExistsError, match=r"2 file\(s\) pixelmill did not write \(README.md, notes.txt\)"):
        check_mode(layout, "overwrite")
    check_mode(layout, "overwrite", force=True)
    check_mode(layout, "append")
    from pipelines.card import MARKER

    s3.pipe("pixelmill/guard/README.md", f"---\n---\n{MARKER}\n".encode())
    layout.fs.invalidate_cache()
    assert [p.rsplit("/", 1)[1] for p in foreign_files(layout)] == ["notes.txt"]
