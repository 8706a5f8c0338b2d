"""Run a job on a three-node local Ray cluster and kill a worker node mid-run (a test scenario).

Run as ``python -m tests.pipelines.node_loss_scenario JOB.yaml``, in its own process
because a process holds one Ray runtime and the test session already has one.
Prints one JSON line: what was removed, when, and the run's summary.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import ray
from ray.cluster_utils import Cluster

from pipelines.layout import OutputLayout
from pipelines.runner import run_job
from pipelines.spec import load_spec


def _node_of_generate_actor() -> str | None:
    """Return the node id hosting a live GenerateStage actor (GCS actor table), if any."""
    from ray._private import state

    for actor in state.actors().values():
        if "GenerateStage" in actor.get("ActorClassName", "") and actor.get("State") == "ALIVE":
            return actor["Address"]["NodeID"]
    return None


def main(spec_path: str) -> dict[str, Any]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    report: dict[str, Any] = {}
    try:
        spec = load_spec(spec_path, sets=[f"ray.address={cluster.address}"])
        ray.init(address=cluster.address)
        done: dict[str, Any] = {}
        run = threading.Thread(target=lambda: done.update(summary=run_job(spec)), daemon=True)
        run.start()
        deadline = time.monotonic() + 300
        layout = OutputLayout(spec.output.uri, spec.storage_options)
        while run.is_alive() and not layout.committed_shards() and time.monotonic() < deadline:
            time.sleep(0.2)
        host = _node_of_generate_actor()
        victim = next((w for w in workers if w.node_id == host), workers[0])
        report["committed_before_removal"] = len(OutputLayout(spec.output.uri, spec.storage_options).committed_shards())
        report["run_alive_at_removal"] = run.is_alive()
        report["removed_node_hosted_generate_actor"] = victim.node_id == host
        cluster.remove_node(victim, allow_graceful=False)  # SIGKILL the node's processes, as a crash would
        run.join(timeout=480)
        summary = done.get("summary")
        report["finished"] = summary is not None
        report["summary"] = None if summary is None else {
            "input_rows": summary.input_rows, "images": summary.images, "errors": summary.errors,
            "balanced": summary.balanced, "equation": summary.equation,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    return report


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
