"""What every benchmark shares: a moto S3 server, prompt tables, job specs, memory probes, the result table.

Benchmarks compare two ways of doing the same work measured side by side in one process
run, and print the ratio; absolute times are reported, never asserted (the machines are
shared and noisy).  Each benchmark writes its numbers as JSON under ``bench/results/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from pipelines.accounting import RunSummary

# ``PIXELMILL_BENCH_RESULTS`` moves them (the tests do, so a test run keeps the last real numbers).
RESULTS_DIR = os.environ.get("PIXELMILL_BENCH_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results"
)
BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with a ``bench`` bucket; ``AWS_*`` variables point at it.

    The server is its own process (``moto_server``), like a real endpoint: in the driver's
    process its request threads would compete for the GIL with Ray Data's executor and
    with the driver's own uploads.  Set before Ray starts, the variables reach every
    worker (the runner forwards them).
    """
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {key: os.environ.get(key) for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        _wait_for(endpoint, server)
        s3().mkdir(BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _wait_for(endpoint: str, server: subprocess.Popen, timeout_s: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto_server exited with {server.returncode}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"moto_server did not answer at {endpoint} within {timeout_s} s")


def s3():
    """An s3fs filesystem on the current ``AWS_ENDPOINT_URL`` (a fresh instance each call)."""
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}, skip_instance_cache=True)


def world_prompts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` prompt rows with captions of the built-in world (what the built-in model draws)."""
    from training import world

    return [
        {"id": f"row-{i:06d}", "prompt": world.caption(scene)}
        for i, scene in enumerate(world.scenes(n, seed))
    ]


def write_prompt_table(uri: str, rows: list[dict[str, Any]]) -> str:
    """Write ``rows`` as one Parquet file at ``uri`` (local or ``s3://``) and return the URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.storage import filesystem

    fs, path = filesystem(uri)  # the store's retry policy, as for every other byte
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        pq.write_table(pa.Table.from_pylist(rows), handle)
    return uri


def job_spec(input_uri: str, output_uri: str, *sets: str, **sections: Any):
    """A validated ``JobSpec`` for a benchmark run: built-in shapes model, 64x64, 2 steps, no report."""
    from pipelines.spec import load_spec

    raw = {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "samples_per_shard": 256, "report": False},
        "model": {"uri": "builtin:shapes-sd"},
        "defaults": {"width": 64, "height": 64, "steps": 2},
        "ray": {"stall_timeout_s": 0},
        **sections,
    }
    return load_spec(raw=raw, sets=list(sets))


def run_pipeline(spec, rows: list[dict], name: str) -> tuple[float, RunSummary]:
    """Wall seconds of one ``run_job`` of ``spec`` over ``rows``, and its summary.

    The rows are read from and the output written to ``s3://bench/<name>/``.
    """
    from pipelines.runner import run_job

    source = write_prompt_table(f"s3://{BUCKET}/{name}/prompts.parquet", rows)
    run_spec = spec.model_copy(update={
        "input": spec.input.model_copy(update={"uri": source}),
        "output": spec.output.model_copy(update={"uri": f"s3://{BUCKET}/{name}/out"}),
    })
    start = time.perf_counter()
    summary = run_job(run_spec, mode="overwrite")
    return time.perf_counter() - start, summary


def init_ray(num_cpus: int | None = None) -> None:
    """One local Ray runtime for the whole benchmark process (started once, like the test session)."""
    import ray

    if not ray.is_initialized():
        from pipelines.storage import storage_env_vars

        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        ray.init(  # address "local": a new runtime, never a cluster another process left running
            address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
            runtime_env={"env_vars": storage_env_vars()}, log_to_driver=False,
        )


def worker_kind(cmdline0: str) -> str:
    """What a Ray worker process is, from its ``ray::`` title: an actor's class, or task workers."""
    name = cmdline0.removeprefix("ray::")
    if name.startswith("MapWorker("):  # a Ray Data actor: drop the method it runs now
        return name.split(").", 1)[0] + ")" if ")." in name else name
    task_like = any(mark in name for mark in "([-") or name in ("IDLE", "Write")  # Ray Data operators
    internal = name.startswith("_") or (name[:1].isupper() and not task_like)
    if internal:  # _StatsActor, DashboardAgent, ActorLocationTracker, ...: Ray's own, by class
        return f"ray {name.split('.', 1)[0]}"
    return "task workers"  # IDLE, or running a read/map/write task now


def process_kind(cmdline: list[str], pid: int) -> str | None:
    """What a process is to a benchmark: ``driver`` (this one), ``moto``, a Ray worker's
    :func:`worker_kind`, or None (anything else on the machine)."""
    if pid == os.getpid():
        return "driver"
    if cmdline and cmdline[0].startswith("ray::"):
        return worker_kind(cmdline[0])
    if "moto.server" in cmdline:
        return "moto"
    return None


def epoch_seconds(stamp: str) -> float:
    """Seconds since the epoch of an ISO time (the shard stats files' ``start_time``/``end_time``)."""
    import datetime as dt

    return dt.datetime.fromisoformat(stamp).timestamp()


class MemoryProbe:
    """Peak resident memory (RSS) and CPU seconds of this process, Ray's workers and moto, sampled every 0.2 s.

    Ray's workers are separate processes (``ray::`` in their command line).  Their total is
    the largest sum seen in one sample of their PSS (proportional set size: a page shared by
    n processes, such as torch's libraries that every worker maps, counts 1/n in each, so the
    sum is the memory they really hold; a sum of RSS counts shared pages once per process)
    and, for reference, of their RSS; also the largest single worker (RSS) and the most
    worker processes alive at once.  Peaks and CPU seconds are also kept per kind of worker
    (:func:`worker_kind`), which is the profile that says where memory and CPU went.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.driver_peak = 0
        self.workers_peak = 0
        self.worker_peak = 0
        self.workers_pss_peak = 0
        self.processes_peak = 0
        self.peak_by_kind: dict[str, int] = {}
        self._cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (kind, first CPU s, last CPU s)
        self._first_sample = True
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        self.driver_peak = max(self.driver_peak, me.memory_info().rss)
        total = pss = processes = 0
        # PSS means reading each process's smaps_rollup, which costs the kernel a page-table
        # walk: py-spy showed it taking most of the driver's CPU at every sample, so it is
        # read on every 10th sample (2 s) only.
        with_pss = self._samples % 10 == 0
        self._samples += 1
        for process in psutil.process_iter(["pid", "cmdline", "memory_info", "cpu_times"]):
            cmdline = process.info["cmdline"] or []
            kind = process_kind(cmdline, process.info["pid"])
            if kind is None or process.info["memory_info"] is None or process.info["cpu_times"] is None:
                continue
            if kind not in ("driver", "moto"):  # a Ray worker
                rss = process.info["memory_info"].rss
                total += rss
                processes += 1
                if with_pss:
                    with contextlib.suppress(psutil.Error):
                        pss += process.memory_full_info().pss
                self.worker_peak = max(self.worker_peak, rss)
                # A task worker's memory is kept under the operator it runs at that moment.
                label = f"task: {cmdline[0].removeprefix('ray::')}" if kind == "task workers" else kind
                self.peak_by_kind[label] = max(self.peak_by_kind.get(label, 0), rss)
            cpu = process.info["cpu_times"].user + process.info["cpu_times"].system
            pid = process.info["pid"]
            # A process first seen after the probe started did all its work while it ran.
            first = self._cpu[pid][1] if pid in self._cpu else (cpu if self._first_sample else 0.0)
            self._cpu[pid] = (kind, first, cpu)
        self.workers_peak = max(self.workers_peak, total)
        self.workers_pss_peak = max(self.workers_pss_peak, pss)
        self.processes_peak = max(self.processes_peak, processes)
        self._first_sample = False

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemoryProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds used while the probe ran, per kind of process (driver, moto, each actor class, ...)."""
        totals: dict[str, float] = {}
        for kind, first, last in self._cpu.values():
            totals[kind] = totals.get(kind, 0.0) + last - first
        return {kind: round(value, 1) for kind, value in sorted(totals.items(), key=lambda kv: -kv[1])}

    def as_mib(self) -> dict[str, Any]:
        return {
            "driver_peak_mib": round(self.driver_peak / 2**20, 1),
            "workers_pss_peak_mib": round(self.workers_pss_peak / 2**20, 1),
            "workers_rss_sum_peak_mib": round(self.workers_peak / 2**20, 1),
            "worker_processes_peak": self.processes_peak,
            "largest_worker_peak_mib": round(self.worker_peak / 2**20, 1),
            "worker_peak_mib_by_kind": {
                kind: round(rss / 2**20, 1) for kind, rss in sorted(self.peak_by_kind.items(), key=lambda kv: -kv[1])
            },
        }


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process, by Ray's workers and by moto.

    Sampled before and after a phase, the differences say which process the phase's CPU
    time went to (Ray workers that exit in between are not counted).
    """
    totals = {"driver": 0.0, "ray_workers": 0.0, "moto": 0.0}
    for process in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        kind = process_kind(process.info["cmdline"] or [], process.info["pid"])
        times = process.info["cpu_times"]
        if kind is not None and times is not None:
            totals[kind if kind in ("driver", "moto") else "ray_workers"] += times.user + times.system
    return totals


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-process CPU seconds between two :func:`cpu_seconds` samples."""
    return {name: round(after[name] - before[name], 2) for name in before}


@contextlib.contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    """Store the wall time of the block in ``into[key]`` (seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = time.perf_counter() - start


def report(name: str, rows: list[dict[str, Any]], ratios: dict[str, dict[str, Any]], extra: dict | None = None) -> dict:
    """Print a table of ``rows`` and the ratios against their targets; write ``results/<name>.json``.

    Args:
        rows: one dict per measured variant (same keys in each).
        ratios: name -> ``{"value": float, "target": str, "met": bool}``.
    """
    print(f"\n== {name} ==")
    if rows:
        keys = list(rows[0])
        widths = {k: max(len(k), *(len(_cell(r.get(k))) for r in rows)) for k in keys}
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for row in rows:
            print("  ".join(_cell(row.get(k)).ljust(widths[k]) for k in keys))
    for label, ratio in ratios.items():
        verdict = "met" if ratio["met"] else "MISSED"
        print(f"{label}: {ratio['value']:.2f} (target {ratio['target']}: {verdict})")
    payload = {"benchmark": name, "cpus": os.cpu_count(), **(extra or {}), "table": rows, "ratios": ratios}
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w") as handle:
        json.dump(payload, handle, indent=1)
    return payload


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
