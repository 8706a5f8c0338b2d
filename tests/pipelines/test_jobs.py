"""``pixelmill submit|status|logs|stop`` against a real local Ray head with its job server and token auth.

The head is ``ray start --head --block`` in its own process group, with its own
``--temp-dir`` and ports, so it never meets the session's ``ray.init`` runtime
(``ray.init()`` only discovers clusters recorded in the default temp dir).  The
CLI runs in subprocesses: Ray caches the auth mode and token per process (in
C++), and this test process may hold the session runtime's token.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from pipelines import jobs
from pipelines.spec import load_spec
from tests.pipelines.readback import read_output

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.yaml"
LIMIT = 4
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray address/auth, storage or fault variables, plus ``extra``."""
    drop = set(AUTH_VARS) | set(jobs.STORAGE_ENV_VARS) | {"PIXELMILL_FAULTS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "OMP_NUM_THREADS": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **extra}


@dataclass
class Head:
    """A running head: its job server URL and token."""

    address: str
    token: str

    def env(self, **extra: str) -> dict[str, str]:
        """A client environment that sends this head's token."""
        return _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, **extra)


def _stop_group(process: subprocess.Popen, temp_dir: str) -> None:
    """Stop the head's process group, then anything else still running from its temp dir."""
    import psutil

    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)  # ray start --block drains for up to 30 s; the test does not need that
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in proc.info["cmdline"] or []):
            proc.kill()


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """A Ray head with the dashboard/job server on 127.0.0.1 and token auth, stopped at the end."""
    token = secrets.token_hex(16)
    temp_dir = tempfile.mkdtemp(prefix="pmray-")  # short: Ray's socket paths have a length limit
    names = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
             "node-manager-port", "object-manager-port")
    free: set[int] = set()
    while len(free) < len(names):
        free.add(_free_port())
    ports = dict(zip(names, sorted(free)))
    worker_base = 20000 + secrets.randbelow(12000)  # below Linux's ephemeral range, where _free_port draws
    command = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--disable-usage-stats",
        # Four logical CPUs: three actor pools hold 1.5 and the read/encode/write tasks need the rest.
        "--num-cpus=4", f"--temp-dir={temp_dir}",
        f"--min-worker-port={worker_base}", f"--max-worker-port={worker_base + 199}",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    log = open(Path(temp_dir) / "head.log", "wb")
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                headers = {"Authorization": f"Bearer {token}"}
                if requests.get(f"{address}/api/version", headers=headers, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, (Path(temp_dir) / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            time.sleep(1)
        yield Head(address=address, token=token)
    finally:
        _stop_group(process, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


@dataclass
class Submitted:
    """One ``submit --wait`` of the demo spec and what the test needs to check it."""

    result: subprocess.CompletedProcess
    job_id: str
    output: Path
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def submitted(head: Head, tmp_path_factory: pytest.TempPathFactory, model_cache: str) -> Submitted:
    """The demo spec submitted with credentials in the environment, waited for (bounded)."""
    output = tmp_path_factory.mktemp("cluster-out") / "demo"
    values = {
        "AWS_ACCESS_KEY_ID": f"pmkey{secrets.token_hex(8)}",
        "AWS_SECRET_ACCESS_KEY": f"pmsecret{secrets.token_hex(12)}",
        "PIXELMILL_TEST_EXTRA": f"pmextra{secrets.token_hex(8)}",
    }
    result = _cli(
        "submit", str(DEMO), "--address", head.address, "--output", str(output), "--limit", str(LIMIT),
        "--set", f"model.cache_dir={model_cache}", "--mode", "overwrite",
        "--env-var", "PIXELMILL_TEST_EXTRA", "--wait",
        env=head.env(**values), timeout=300,
    )
    job_id = result.stdout.splitlines()[0] if result.stdout else ""
    return Submitted(result=result, job_id=job_id, output=output, secrets=values)


def test_cluster_spec_joins_the_cluster_and_round_trips() -> None:
    spec = load_spec(DEMO, sets=["stages.generate.concurrency=[1, 3]"], limit=LIMIT)
    shipped = jobs.cluster_spec(spec)
    assert shipped.ray.address == "auto"
    reloaded = load_spec(raw=yaml.safe_load(jobs.spec_yaml(shipped)))
    assert reloaded == shipped
    assert reloaded.model_dump(exclude={"ray"}) == spec.model_dump(exclude={"ray"})


def test_working_dir_ships_code_and_spec_without_excluded_folders(tmp_path: Path) -> None:
    staged = jobs.stage_working_dir(load_spec(DEMO), tmp_path / "job")
    assert (staged / jobs.SPEC_NAME).exists() and (staged / "examples" / "prompts.jsonl").exists()
    assert all((staged / package / "__init__.py").exists() for package in jobs.PACKAGES)
    assert not any((staged / name).exists() for name in (".git", ".venv", "out", "tests"))
    assert not list(staged.rglob("__pycache__"))
    assert "RAY_OVERRIDE_JOB_RUNTIME_ENV" in jobs.runtime_env(staged, {})["env_vars"]


def test_env_var_takes_names_never_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("MY_TOKEN", "other-value")
    env, missing = jobs.forwarded_env(["MY_TOKEN", "NOT_SET_ANYWHERE"])
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value" and env["MY_TOKEN"] == "other-value"
    assert missing == ["NOT_SET_ANYWHERE"]
    with pytest.raises(jobs.JobsError) as error:
        jobs.forwarded_env(["MY_TOKEN=typed-on-the-command-line"])
    assert "typed-on-the-command-line" not in str(error.value)


def test_no_cluster_at_the_address_is_one_clear_line() -> None:
    result = _cli("status", "raysubmit_x", "--address", f"http://127.0.0.1:{_free_port()}", env=_clean_env())
    assert result.returncode == 2
    assert "no Ray job server answers at" in result.stderr and "Traceback" not in result.stderr


def test_submit_runs_the_demo_on_the_cluster(submitted: Submitted) -> None:
    result = submitted.result
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert submitted.job_id.startswith("raysubmit_"), result.stdout[:500]
    assert f"{LIMIT} images out" in result.stdout  # the run's summary, streamed by --wait
    out = read_output(str(submitted.output))
    assert len(out["samples"]) == LIMIT and out["run"]["balanced"]
    assert out["run"]["spec"]["ray"]["address"] == "auto"


def test_status_logs_and_stop(head: Head, submitted: Submitted) -> None:
    status = _cli("status", submitted.job_id, "--address", head.address, env=head.env())
    assert status.returncode == 0, status.stderr
    assert f"{submitted.job_id} SUCCEEDED, exit code 0, output {submitted.output}" in status.stdout
    logs = _cli("logs", submitted.job_id, "--address", head.address, env=head.env())
    assert logs.returncode == 0 and f"{LIMIT} images out" in logs.stdout
    stop = _cli("stop", submitted.job_id, "--address", head.address, env=head.env())
    assert stop.returncode == 0 and "not running" in stop.stdout
    printed = status.stdout + status.stderr + logs.stdout + logs.stderr
    assert not [value for value in submitted.secrets.values() if value in printed]


def test_credentials_go_by_name_and_are_never_printed(head: Head, submitted: Submitted) -> None:
    info = requests.get(
        f"{head.address}/api/jobs/{submitted.job_id}", headers={"Authorization": f"Bearer {head.token}"}, timeout=10
    ).json()
    env_vars = info["runtime_env"]["env_vars"]
    for name, value in submitted.secrets.items():
        assert env_vars[name] == value  # forwarded from the submitter's environment, by name
    printed = submitted.result.stdout + submitted.result.stderr
    assert "AWS_SECRET_ACCESS_KEY" in submitted.result.stderr  # the names are shown
    for value in submitted.secrets.values():
        assert value not in printed


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({}, "requires a token (401)"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}, "refused the token (403)"),
    ],
    ids=["no-token", "wrong-token"],
)
def test_submission_without_the_token_is_refused(head: Head, auth: dict[str, str], message: str) -> None:
    result = _cli("submit", str(DEMO), "--address", head.address, env=_clean_env(**auth))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    refusal = [line for line in result.stderr.splitlines() if "refused" in line or "requires" in line]
    assert len(refusal) == 1 and refusal[0].startswith("pixelmill: "), result.stderr
    assert not result.stdout.strip()  # no job id


def test_job_state_maps_to_exit_codes() -> None:
    def state(status: str, code: int | None) -> jobs.JobState:
        return jobs.JobState(job_id="j", status=status, message="", driver_exit_code=code, output=None)

    assert jobs.exit_code(state("SUCCEEDED", 0)) == 0
    assert jobs.exit_code(state("FAILED", 3)) == 3  # the watchdog's code survives the trip
    assert jobs.exit_code(state("FAILED", None)) == 1 and jobs.exit_code(state("STOPPED", None)) == 1
