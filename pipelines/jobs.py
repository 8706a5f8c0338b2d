"""Run jobs on a Ray cluster through Ray's Job Submission API: submit, status, logs, stop.

``submit`` validates the spec here, then ships it to the cluster's job server
(the dashboard, port 8265) with the project's code:

* the runtime env's ``working_dir`` is a temporary copy of the project root
  (``pipelines/``, ``actors/``, ``models/``, ``examples/``, ... without
  :data:`EXCLUDES`) plus the resolved spec as :data:`SPEC_NAME`.  A file rather
  than an environment variable: the job's runtime env is shown to anyone who
  can read the dashboard, the spec may carry ``storage_options``, and a copy
  (rather than a file written into the checkout) leaves the user's tree alone;
* storage credentials go by reference: the *names* in
  :data:`pipelines.storage.STORAGE_ENV_VARS` (plus ``--env-var NAME``) are
  looked up in the submitter's environment and put in the runtime env's
  ``env_vars``; their values are never printed or logged;
* the entrypoint is ``python -m pipelines.cli run pixelmill-job.yaml``, with
  ``ray.address: auto`` in the shipped spec so the driver joins the cluster.

Token authentication (Ray >= 2.52) is Ray's own: the client sends
``Authorization: Bearer <token>`` when ``RAY_AUTH_MODE=token``, reading the
token from ``RAY_AUTH_TOKEN``, else the file in ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token``.  Refusals become :class:`JobsError` with one line.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipelines.spec import JobSpec
from pipelines.storage import STORAGE_ENV_VARS

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "DEFAULT_ADDRESS",
    "EXCLUDES",
    "JobState",
    "JobsError",
    "cluster_spec",
    "default_address",
    "entrypoint",
    "exit_code",
    "follow_logs",
    "forwarded_env",
    "job_logs",
    "job_state",
    "runtime_env",
    "stop_job",
    "submit_job",
]

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
SPEC_NAME = "pixelmill-job.yaml"
PACKAGES = ("pipelines", "actors", "models")
# Kept out of the working_dir (gitignore-style names, matched at any depth, or paths from the root).
EXCLUDES = [
    ".git", ".venv", "venv", "out", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".pytest_cache", ".ruff_cache", ".mypy_cache", ".ci", "tests", "bench/results",
]
# Ray's job supervisor forbids a driver's ray.init(runtime_env=...) from repeating env_vars keys
# of the job's runtime env; the runner forwards the same storage variables, so let it override.
_MERGE_VAR = "RAY_OVERRIDE_JOB_RUNTIME_ENV"
# Ray's JobSubmissionClient lets these variables override its address argument; --address must win.
_ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_FINAL_STATE_WAIT_S = 30.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN_HELP = (
    "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
)


class JobsError(Exception):
    """Talking to the Ray job server failed in a way the user can fix; the message is one line."""


@dataclass(frozen=True)
class JobState:
    """What ``pixelmill status`` shows of a job: never its runtime env (it holds credentials)."""

    job_id: str
    status: str
    message: str
    driver_exit_code: int | None
    output: str | None

    @property
    def finished(self) -> bool:
        """Whether the job has reached a terminal state."""
        return self.status in ("SUCCEEDED", "FAILED", "STOPPED")

    def line(self) -> str:
        """Return the one-line summary printed by ``pixelmill status``."""
        parts = [f"{self.job_id} {self.status}"]
        if self.driver_exit_code is not None:
            parts.append(f"exit code {self.driver_exit_code}")
        if self.output:
            parts.append(f"output {self.output}")
        message = self.message.strip().splitlines()[0] if self.message.strip() else ""
        return ", ".join(parts) + (f": {message}" if message else "")


def default_address() -> str:
    """Return the job server address: ``RAY_API_SERVER_ADDRESS``, ``RAY_ADDRESS`` (Ray's convention), else local."""
    return os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def cluster_spec(spec: JobSpec) -> JobSpec:
    """Return the spec as it runs on a cluster: ``ray.address: auto`` joins the cluster the job is on."""
    raw = spec.model_dump(mode="json", exclude_unset=True)
    raw["ray"] = {**raw.get("ray", {}), "address": "auto"}
    return JobSpec.model_validate(raw)


def spec_yaml(spec: JobSpec) -> str:
    """Return the spec as YAML: the keys the file and the overrides set (defaults are the shipped code's)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def entrypoint(spec_path: str, *, mode: str = "resume", min_success_rate: float = 0.99) -> str:
    """Return the shell command the job server runs: ``python -m pipelines.cli run SPEC ...``."""
    return shlex.join([
        "python", "-m", "pipelines.cli", "run", spec_path,
        "--mode", mode, "--min-success-rate", str(min_success_rate),
    ])


def forwarded_env(extra_names: Iterable[str] = ()) -> tuple[dict[str, str], list[str]]:
    """Return ``(env_vars, missing)``: the named variables set here, and the extra names that are not.

    The storage variables are forwarded when set; ``extra_names`` (``--env-var``)
    must be plain names, never ``NAME=value`` (a value on a command line ends up
    in shell history and process listings).
    """
    extra = list(extra_names)
    for name in extra:
        if not _ENV_NAME.match(name):
            shown = name.split("=", 1)[0]  # never echo a value
            raise JobsError(f"--env-var takes a name (got {shown!r}...); the value is read from this environment")
    names = list(dict.fromkeys([*STORAGE_ENV_VARS, *extra]))
    env = {name: os.environ[name] for name in names if name in os.environ}
    return env, [name for name in extra if name not in os.environ]


def project_root() -> Path:
    """Return the folder holding the ``pipelines`` package (the repository root of a checkout)."""
    return Path(__file__).resolve().parents[1]


def _ignored(root: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(folder: str, names: list[str]) -> set[str]:
        relative = Path(folder).relative_to(root)
        return {
            name for name in names
            if any(fnmatch(name, pattern) or fnmatch((relative / name).as_posix(), pattern) for pattern in EXCLUDES)
        }

    return ignore


def stage_working_dir(spec: JobSpec, dest: Path, *, root: Path | None = None) -> Path:
    """Copy the project (without :data:`EXCLUDES`) into ``dest`` with the spec as :data:`SPEC_NAME`; return ``dest``.

    A checkout (a root with ``pyproject.toml``) is copied whole, so relative
    input paths such as ``examples/prompts.jsonl`` resolve on the cluster too;
    an installed pixelmill ships only its packages.
    """
    root = root or project_root()
    if (root / "pyproject.toml").exists():
        shutil.copytree(root, dest, ignore=_ignored(root), dirs_exist_ok=True)
    else:
        for package in PACKAGES:
            shutil.copytree(root / package, dest / package, ignore=_ignored(root / package), dirs_exist_ok=True)
    (dest / SPEC_NAME).write_text(spec_yaml(spec))
    return dest


def runtime_env(working_dir: Path, env_vars: dict[str, str]) -> dict[str, Any]:
    """Return the job's runtime env: the staged working dir, excludes, forwarded variables."""
    return {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": {**env_vars, _MERGE_VAR: "1"}}


@contextmanager
def _address_from_argument() -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in _ADDRESS_VARS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _check_token_path() -> None:
    # Ray's token loader aborts the process (no Python exception) on an unreadable RAY_AUTH_TOKEN_PATH.
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and not os.environ.get("RAY_AUTH_TOKEN"):
        try:
            readable = bool(Path(path).expanduser().read_text().strip())
        except OSError:
            readable = False
        if not readable:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path} is not a readable, non-empty token file")


def _auth_message(address: str, error: BaseException) -> str:
    if "Authentication failed" in str(error):
        return (
            f"the Ray cluster at {address} refused the token (403): the one in RAY_AUTH_TOKEN, "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (first found) is not the cluster's"
        )
    return f"the Ray cluster at {address} requires a token (401) and none was sent; {_TOKEN_HELP}"


@contextmanager
def _translated(address: str) -> Iterator[None]:
    """Turn the job client's exceptions (requests, aiohttp, Ray) into one-line :class:`JobsError`."""
    from aiohttp import ClientResponseError
    from ray.exceptions import AuthenticationError

    try:
        yield
    except JobsError:
        raise
    except AuthenticationError as error:
        raise JobsError(_auth_message(address, error)) from None
    except ClientResponseError as error:  # the log stream's websocket handshake (aiohttp)
        if error.status in (401, 403):
            reason = Exception("Authentication failed" if error.status == 403 else "")
            raise JobsError(_auth_message(address, reason)) from None
        raise JobsError(f"the Ray job server at {address} answered {error.status}: {error.message}") from None
    except OSError as error:  # ConnectionError, and requests'/aiohttp's connection errors
        raise JobsError(
            f"no Ray job server answers at {address} ({type(error).__name__}); "
            "is the cluster up and its dashboard port reachable? (--address or RAY_ADDRESS)"
        ) from None
    except RuntimeError as error:
        raise JobsError(f"the Ray job server at {address} answered: {_server_message(error)}") from None
    except ValueError as error:  # Ray's packaging: a working dir over its size limit, a bad runtime env
        raise JobsError(f"the job was not sent to {address}: {_server_message(error)}") from None


def _server_message(error: BaseException) -> str:
    """Return the useful line of a job server error (its exception line when it sent a traceback)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if re.search(r"\w", line)]
    if not lines:
        return type(error).__name__
    status = re.match(r"Request failed with status code \d+", lines[0])
    raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    if "Traceback" in lines[0] and raised:
        return f"{status.group(0)}: {raised[-1]}" if status else raised[-1]
    return lines[0]


def connect(address: str) -> JobSubmissionClient:
    """Return a client for the job server at ``address``, or raise :class:`JobsError`."""
    from ray.job_submission import JobSubmissionClient

    _check_token_path()
    with _translated(address), _address_from_argument():
        return JobSubmissionClient(address)


def submit_job(
    spec: JobSpec,
    *,
    address: str,
    env_vars: dict[str, str],
    mode: str = "resume",
    min_success_rate: float = 0.99,
    submission_id: str | None = None,
    root: Path | None = None,
) -> str:
    """Submit ``spec`` to the cluster at ``address`` and return the job's submission id.

    Args:
        spec: the validated spec (overrides applied); it is shipped with ``ray.address: auto``.
        address: the job server, e.g. ``http://head:8265``.
        env_vars: variables for the driver and every worker (see :func:`forwarded_env`).
        mode, min_success_rate: passed to ``pixelmill run`` on the cluster.
        submission_id: a chosen id (a second submission with the same id is refused).
        root: the project folder to ship (default: this checkout).
    """
    client = connect(address)
    with tempfile.TemporaryDirectory(prefix="pixelmill-submit-") as stage:
        working_dir = stage_working_dir(cluster_spec(spec), Path(stage) / "job", root=root)
        with _translated(address):
            return client.submit_job(
                entrypoint=entrypoint(SPEC_NAME, mode=mode, min_success_rate=min_success_rate),
                runtime_env=runtime_env(working_dir, env_vars),
                submission_id=submission_id,
                metadata={"pixelmill_output": spec.output.uri},
            )


def job_state(job_id: str, *, address: str) -> JobState:
    """Return the state of a job (status, message, driver exit code, output)."""
    client = connect(address)
    with _translated(address):
        info = client.get_job_info(job_id)
    return JobState(
        job_id=job_id,
        status=str(getattr(info.status, "value", info.status)),
        message=info.message or "",
        driver_exit_code=getattr(info, "driver_exit_code", None),
        output=(info.metadata or {}).get("pixelmill_output"),
    )


def job_logs(job_id: str, *, address: str) -> str:
    """Return the job's logs so far (the driver's stdout and stderr)."""
    client = connect(address)
    with _translated(address):
        return client.get_job_logs(job_id)


def follow_logs(job_id: str, *, address: str, write: Callable[[str], Any] = sys.stdout.write) -> JobState:
    """Stream the job's logs to ``write`` until it finishes; return its final state."""
    client = connect(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    with _translated(address):
        asyncio.run(tail())
    # The stream closes when the driver exits; the job server records the final status just after.
    deadline = time.monotonic() + _FINAL_STATE_WAIT_S
    state = job_state(job_id, address=address)
    while not state.finished and time.monotonic() < deadline:
        time.sleep(0.5)
        state = job_state(job_id, address=address)
    return state


def stop_job(job_id: str, *, address: str) -> bool:
    """Ask the job to stop; return whether it was still running."""
    client = connect(address)
    with _translated(address):
        return client.stop_job(job_id)


def exit_code(state: JobState) -> int:
    """Map a finished job to pixelmill's exit codes (the driver's own code when the job failed)."""
    if state.status == "SUCCEEDED":
        return 0
    if state.status == "FAILED" and state.driver_exit_code not in (None, 0):
        return int(state.driver_exit_code)
    return 1
