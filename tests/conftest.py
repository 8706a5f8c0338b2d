"""Shared fixtures: one local Ray runtime, one moto S3 server, one model cache per session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before Ray starts so every worker inherits them through the runtime env.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

# A prompt containing this text raises inside the generate stage (pipelines.faults, switched
# on for the session's Ray workers only): the "row whose processing raises" of poisoned inputs.
POISON_MARKER = "<poison:raise>"
SESSION_FAULTS = [{"at": "stage:generate", "do": "raise", "prompt": POISON_MARKER}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server over HTTP on 127.0.0.1, shared by the session; ``AWS_ENDPOINT_URL`` points at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        os.environ.pop("AWS_ENDPOINT_URL", None)


@pytest.fixture(scope="session")
def ray_session(moto_endpoint: str) -> Iterator[None]:
    """One local Ray runtime for the whole session (starting Ray costs seconds)."""
    import json

    import ray

    from pipelines.faults import ENV_VAR
    from pipelines.storage import storage_env_vars

    # Four logical CPUs on a 2-core machine: actor pools hold their CPUs for the
    # whole run and tasks need slots beside them (the runner sizes local Ray the same way).
    env_vars = {**storage_env_vars(), ENV_VAR: json.dumps(SESSION_FAULTS)}
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env_vars})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def s3(moto_endpoint: str):
    """An s3fs filesystem on the moto server with a clean state and a ``pixelmill`` bucket."""
    import requests
    import s3fs

    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_endpoint})
    fs.mkdir("pixelmill")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One model cache folder shared by every test of the session."""
    return str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture
def write_prompts(tmp_path: Path):
    """Write a list of row dicts as a prompt table and return its path."""
    import json

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    def write(rows: list[dict], name: str = "prompts.jsonl", folder: Path | None = None) -> Path:
        path = (folder or tmp_path / "input") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(key for row in rows for key in row))
        table = pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows])
        if name.endswith(".jsonl"):
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        elif name.endswith(".csv"):
            pacsv.write_csv(table, path)
        elif name.endswith(".parquet"):
            pq.write_table(table, path)
        else:
            raise ValueError(name)
        return path

    return write


# Modules whose every test starts a subprocess, a cluster or a fault-injecting server.
_SLOW_MODULES = (
    "test_jobs.py", "test_lease.py", "test_output_guard.py", "test_node_loss.py", "test_bench.py", "test_faults.py",
    "test_s3faults.py", "test_user_commands.py", "test_preflight_cli.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs Ray (the ``ray_session`` fixture) or a subprocess module.

    ``scripts/test.sh --fast`` runs the rest (``-m "not slow"``): the inner loop.
    """
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()) or item.path.name in _SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
