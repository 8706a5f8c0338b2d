"""One run at a time per output: conditional writes, the lease, shard claims, concurrent CLI runs.

The primitives run on local disk and on the moto server (which honours ``If-None-Match`` and
``If-Match`` on PutObject); the end-to-end tests start ``pixelmill run`` drivers as a user
would, joined to the session's Ray runtime.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from pipelines.layout import OutputLayout
from pipelines.lease import Lease, LeaseHeld
from pipelines.sink import ShardDatasink, ShardTaken
from pipelines.spec import OutputSpec
from pipelines.storage import WriteConflict, create_new, read_tagged, replace_tagged
from tests.pipelines.readback import check_exactly_once, read_output

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def output(request: pytest.FixtureRequest, tmp_path: Path) -> OutputLayout:
    """An empty output root on local disk or on the moto server."""
    if request.param == "s3":
        request.getfixturevalue("s3")
        return OutputLayout("s3://pixelmill/out")
    (tmp_path / "out").mkdir()
    return OutputLayout(str(tmp_path / "out"))


def _stale_lease(layout: OutputLayout, run_id: str, *, age_s: float) -> None:
    beat = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)).isoformat()
    body = {"run_id": run_id, "host": "gone", "pid": 1, "started": beat, "heartbeat": beat, "timeout_s": 5}
    layout.fs.pipe_file(layout.lease, json.dumps(body).encode())


def test_create_new_twice_the_second_fails(output: OutputLayout) -> None:
    path = output.path("x.json")
    tag = create_new(output.fs, path, b"first", staging_dir=output.staging_dir())
    with pytest.raises(WriteConflict):
        create_new(output.fs, path, b"second", staging_dir=output.staging_dir())
    assert read_tagged(output.fs, path) == (b"first", tag)
    new_tag = replace_tagged(output.fs, path, b"third", tag=tag, staging_dir=output.staging_dir())
    with pytest.raises(WriteConflict):  # the old version is gone: a second replace with it fails
        replace_tagged(output.fs, path, b"fourth", tag=tag, staging_dir=output.staging_dir())
    assert read_tagged(output.fs, path) == (b"third", new_tag)


def _take(lease: Lease, barrier: threading.Barrier, outcomes: list[str]) -> None:
    barrier.wait()
    try:
        lease.acquire()
        outcomes.append("won")
    except LeaseHeld as error:
        outcomes.append(str(error))


def test_stale_lease_two_contenders_exactly_one_wins(output: OutputLayout) -> None:
    for round_ in range(3):
        _stale_lease(output, "dead", age_s=60)
        leases = [Lease(output, f"run-{round_}-{i}", timeout_s=30) for i in range(4)]
        outcomes: list[str] = []
        barrier = threading.Barrier(len(leases))
        threads = [threading.Thread(target=_take, args=(lease, barrier, outcomes)) for lease in leases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes.count("won") == 1, outcomes
        winner = next(lease for lease in leases if lease.tag is not None)
        assert json.loads(output.fs.cat_file(output.lease))["run_id"] == winner.run_id
        assert all(winner.run_id in text for text in outcomes if text != "won")
        winner.release()
        assert not output.fs.exists(output.lease)


def test_live_lease_refuses_and_heartbeats(output: OutputLayout) -> None:
    holder = Lease(output, "holder", timeout_s=2).acquire()
    try:
        first = json.loads(output.fs.cat_file(output.lease))["heartbeat"]
        with pytest.raises(LeaseHeld, match=r"being written by run holder \(.*pid \d+\) since .* heartbeat \d+ s ago"):
            Lease(output, "second", timeout_s=2).acquire()
        threading.Event().wait(1.5)  # a heartbeat every timeout / 4
        output.fs.invalidate_cache(output.lease)
        assert json.loads(output.fs.cat_file(output.lease))["heartbeat"] > first
    finally:
        holder.release()
    assert not output.fs.exists(output.lease)
    Lease(output, "third", timeout_s=2).acquire().release()


def test_shard_claim_of_another_run_refused(output: OutputLayout) -> None:
    spec = OutputSpec(uri=output.uri, samples_per_shard=10)
    mine, theirs = ShardDatasink(spec, run_id="mine"), ShardDatasink(spec, run_id="theirs")
    assert mine._claim(output, 3) is None
    assert mine._claim(output, 3) is None  # a retried task of the same run goes on
    with pytest.raises(ShardTaken, match="being written by run mine"):
        theirs._claim(output, 3)
    output.fs.rm(output.claim_file(3))
    output.fs.pipe_file(output.shard_file("stats", 3), json.dumps({"shard": 3, "run_id": "mine"}).encode())
    assert mine._claim(output, 3) == {"shard": 3, "run_id": "mine"}  # retried after its commit
    with pytest.raises(ShardTaken, match="committed by run mine"):
        theirs._claim(output, 3)
    assert not output.fs.exists(output.claim_file(3))


# -- end to end: the CLI, as a user runs it ------------------------------------------------


@pytest.fixture
def cli(ray_session, tmp_path: Path, write_prompts, model_cache: str):
    """Return a starter of ``pixelmill run job.yaml --mode MODE`` drivers for a prompt set ``a`` or ``b``."""
    import ray

    address = ray.get_runtime_context().gcs_address
    inputs = {name: write_prompts([{"id": f"{name}{i:02d}", "prompt": f"{name} shape {i}"} for i in range(40)],
                                  folder=tmp_path / name) for name in ("a", "b")}

    def start(name: str, output_uri: str, mode: str) -> subprocess.Popen:
        raw = {"input": {"uri": str(inputs[name])},
               "output": {"uri": output_uri, "samples_per_shard": 10, "report": False, "lease_timeout_s": 20},
               "model": {"cache_dir": model_cache}, "defaults": {"width": 32, "height": 32, "steps": 1},
               "score": None, "seed": 3}
        path = tmp_path / f"job-{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        env = {k: v for k, v in os.environ.items() if k != "PIXELMILL_FAULTS"}
        command = [sys.executable, "-m", "pipelines.cli", "run", str(path), "--mode", mode,
                   "--set", f"ray.address={address}"]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    return start


def _ids(layout: OutputLayout) -> list[str]:
    """Return the ids in the output's Parquets, sorted, after checking that the tars hold each once."""
    out = read_output(layout.uri)
    ids = sorted(row["id"] for row in out["rows"])
    check_exactly_once(out, ids)
    return ids


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_concurrent_cli_runs_never_overwrite(cli, where: str, request: pytest.FixtureRequest,
                                                 tmp_path: Path) -> None:
    if where == "s3":
        request.getfixturevalue("s3")
    root = "s3://pixelmill" if where == "s3" else str(tmp_path)
    # Two resumes of one job share an output of their own: a resume counts every committed row as skipped.
    for mode, names in (("append", ("a", "b")), ("resume", ("a", "a"))):
        uri = f"{root}/{mode}"
        runs = [cli(name, uri, mode) for name in names]
        results = [(run.wait(timeout=300), run.stdout.read() if run.stdout else "") for run in runs]
        codes = sorted(code for code, _ in results)
        logs = "\n".join(text[-2000:] for _, text in results)
        assert codes in ([0, 0], [0, 2]), logs
        if codes == [0, 2]:
            refused = next(text for code, text in results if code == 2)
            assert "is being written by run" in refused and "heartbeat" in refused, refused
        ids = _ids(OutputLayout(uri))  # every row exactly once: nothing overwritten
        both = [f"{name}{i:02d}" for name in sorted(set(names)) for i in range(40)]
        assert ids == both if codes == [0, 0] else len(ids) == 40 and set(ids) <= set(both), ids
        assert not OutputLayout(uri).fs.exists(OutputLayout(uri).lease)


def test_killed_runs_stale_lease_taken_over_by_cli(cli, tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.root, exist_ok=True)
    _stale_lease(layout, "killed-run", age_s=3600)
    run = cli("a", layout.uri, "resume")
    code, text = run.wait(timeout=300), run.stdout.read() if run.stdout else ""
    assert code == 0, text[-3000:]
    assert "took over the stale lease of run killed-run" in text
    assert _ids(layout) == [f"a{i:02d}" for i in range(40)]
    assert not layout.fs.exists(layout.lease)


def test_a_lease_whose_process_died_on_this_machine_is_taken_over_at_once(output: OutputLayout) -> None:
    """A driver killed on this node (same host name and boot id, pid gone) leaves a lease that is stale
    at once; the same lease from another host waits for its heartbeat to age."""
    import socket
    import subprocess
    import sys

    from pipelines.lease import _boot_id

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    now = dt.datetime.now(dt.UTC).isoformat()
    body = {"run_id": "killed", "host": socket.gethostname(), "boot_id": _boot_id(), "pid": dead_pid,
            "started": now, "heartbeat": now, "timeout_s": 300}
    output.fs.pipe_file(output.lease, json.dumps({**body, "host": "another-node"}).encode())
    with pytest.raises(LeaseHeld, match="being written by run killed"):
        Lease(output, "next", timeout_s=300).acquire()
    output.fs.pipe_file(output.lease, json.dumps(body).encode())
    output.fs.invalidate_cache()
    taken = Lease(output, "next", timeout_s=300).acquire()
    try:
        output.fs.invalidate_cache(output.lease)
        assert json.loads(output.fs.cat_file(output.lease))["run_id"] == "next"
    finally:
        taken.release()
