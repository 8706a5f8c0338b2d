"""Issue 17, items 3 and 4, as a user types them: ``pixelmill validate|run`` as subprocesses.

A missing model, a Hub id without network, a refused storage endpoint and a mistyped output
bucket each stop before any work with exit 2 and one line; a Hub model that a Hugging Face
cache holds runs offline.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.pipelines.hubcache import fill_hub_cache
from tests.pipelines.readback import read_output

REPO = Path(__file__).resolve().parents[2]
ROWS = [{"id": "a", "prompt": "a red circle"}, {"id": "b", "prompt": "a blue square"}]


def _job(tmp_path: Path, input_uri: str | None = None, output_uri: str | None = None, **model: str) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    spec = {
        "input": {"uri": input_uri or str(prompts)},
        "output": {"uri": output_uri or str(tmp_path / "out"), "report": False},
        "model": {"cache_dir": str(tmp_path / "cache"), **model},
        "defaults": {"width": 32, "height": 32, "steps": 1},
        "stages": {"generate": {"batch_size": 2}},
        "score": None,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **env}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(result: subprocess.CompletedProcess) -> str:
    """The run's one ``pixelmill:`` line on stderr, after checking it stopped with exit 2 and no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pixelmill:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_missing_model_folder_stops_validate_and_run(tmp_path: Path) -> None:
    job = _job(tmp_path, uri="/models/sd-turbo")
    for command in ("validate", "run"):
        line = _one_line(_cli(command, str(job)))
        assert line.startswith("pixelmill: model.uri: /models/sd-turbo does not exist"), line
    assert not (tmp_path / "out").exists()  # nothing was done, not even the output folder


def test_a_hub_model_without_network_says_how_to_download_it(tmp_path: Path) -> None:
    job = _job(tmp_path, uri="stabilityai/sd-turbo")
    line = _one_line(_cli("validate", str(job), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf")))
    assert "stabilityai/sd-turbo is not in the Hugging Face cache and there is no network" in line
    assert "`hf download stabilityai/sd-turbo --local-dir /models/sd-turbo`" in line


def test_a_hub_model_in_the_hugging_face_cache_runs_offline(tmp_path: Path) -> None:
    fill_hub_cache(tmp_path / "hf", "pixelmill-test/tiny")
    job = _job(tmp_path, uri="hf://pixelmill-test/tiny")
    result = _cli("run", str(job), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = read_output(str(tmp_path / "out"))
    assert {row["id"] for row in out["rows"]} == {"a", "b"}
    assert all(row["status"] == "ok" and row["model"] == "hf://pixelmill-test/tiny" for row in out["rows"])
    assert out["run"]["settings"]["model.hash"] == "0123456789abcdef"  # the snapshot's commit
    assert not (tmp_path / "cache" / "hub").exists()  # used in place from the user's cache, not copied


def _refused_endpoint() -> str:
    with socket.socket() as sock:  # bound and closed: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_refused_storage_endpoint_fails_in_seconds(tmp_path: Path) -> None:
    endpoint = _refused_endpoint()
    job = _job(tmp_path, input_uri="s3://pixelmill/prompts.jsonl")
    started = time.monotonic()
    line = _one_line(_cli("run", str(job), AWS_ENDPOINT_URL=endpoint))
    # Python's and the libraries' imports take seconds on a busy machine; ten retries took 160-198 s.
    assert time.monotonic() - started < 60
    assert line.startswith(f"pixelmill: input.uri: cannot connect to the storage endpoint {endpoint} "), line


def test_a_mistyped_output_bucket_is_not_created(tmp_path: Path, s3) -> None:
    s3.pipe("pixelmill/prompts.jsonl", b'{"prompt": "a red circle"}\n')
    job = _job(tmp_path, input_uri="s3://pixelmill/prompts.jsonl")
    line = _one_line(_cli("run", str(job), "--output", "s3://typo-bukcet/images/2026-11-30"))
    assert line.startswith("pixelmill: output.uri: the bucket 'typo-bukcet' of s3://typo-bukcet/images/2026-11-30 "
                           "does not exist"), line
    s3.invalidate_cache()
    assert s3.ls("") == ["pixelmill"]


def test_throttling_at_start_up_is_retried_not_fatal(tmp_path: Path, s3, moto_endpoint: str) -> None:
    from pipelines.preflight import check_models, check_output_reachable
    from pipelines.spec import load_spec
    from tests.s3faults import FlakyS3Proxy

    s3.pipe("pixelmill/models/sd/model_index.json", b"{}")
    # Every first try of a request is a 503 SlowDown: the one-attempt probe fails, the retrying client not.
    with FlakyS3Proxy(moto_endpoint, fail_rate=1.0, seed=1, max_consecutive_failures=1) as proxy:
        spec = load_spec(raw={
            "input": {"uri": "s3://pixelmill/prompts.jsonl"}, "output": {"uri": "s3://pixelmill/throttled"},
            "model": {"uri": "s3://pixelmill/models/sd"}, "score": None,
            "storage_options": {"client_kwargs": {"endpoint_url": proxy.endpoint_url}},
        })
        check_output_reachable(spec)
        check_models(spec)
        failed = proxy.failed_by_method()
    assert failed.get("HEAD", 0) >= 2, failed  # the bucket's HEAD and the model marker's each answered 503 once
