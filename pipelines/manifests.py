"""Kubernetes manifests for a job spec: KubeRay RayCluster and RayJob, and a nightly CronJob.

The pod shapes come from the spec's stages, so manifests cannot drift from what
Ray will schedule (``pixelmill cluster render``):

* **GPU worker group** (only when a stage has ``num_gpus > 0``): each pod has
  ``gpus_per_pod`` GPUs (default: the largest actor's ``num_gpus``, rounded
  up); ``minReplicas``/``maxReplicas`` are the pods that hold every GPU actor
  at the pools' smallest/largest size (``concurrency`` or ``[min, max]``),
  packed first-fit-decreasing; a pod's CPUs are those of the actors on the
  fullest pod plus :data:`GPU_POD_SPARE_CPUS`.
* **CPU worker group**: the CPU-only actors' ``num_cpus`` plus the read,
  image-encoding and write tasks (:data:`TASK_CPUS_PER_GPU_ACTOR` per GPU
  actor, :data:`BASE_TASK_CPUS`), in pods of :data:`CPU_POD_CPUS`.
* **head**: CPU only, ``num-cpus: 0`` (the driver runs there; no tasks or actors).

The spec reaches the driver as a ConfigMap mounted on the head; the nightly
CronJob creates a RayJob from a template with the run date in its name and
output path (``__RUN_DATE__``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import yaml

from pipelines.jobs import cluster_spec, entrypoint, spec_yaml
from pipelines.spec import JobSpec, StageSpec

__all__ = ["GroupShape", "cron_job", "cpu_group", "gpu_group", "ray_cluster", "ray_job", "render_files"]

HEAD_CPUS, HEAD_MEMORY = 4, "16Gi"
CPU_POD_CPUS, CPU_POD_MEMORY_PER_CPU_GI = 8, 4
GPU_POD_SPARE_CPUS, GPU_POD_MEMORY_PER_GPU_GI = 2, 32
TASK_CPUS_PER_GPU_ACTOR, BASE_TASK_CPUS = 2, 2
TTL_SECONDS_AFTER_FINISHED = 3600
SPEC_MOUNT = "/etc/pixelmill"
STORAGE_SECRET = "pixelmill-storage"  # AWS_* variables for every Ray container (optional)
TOKEN_SECRET = "pixelmill-ray-token"  # key auth_token: the standing cluster's Ray token
KUBECTL_IMAGE = "bitnami/kubectl:1.31"  # any image with kubectl and /bin/sh
RUN_DATE = "__RUN_DATE__"
_EPSILON = 1e-9
Bound = Literal["min", "max"]


@dataclass(frozen=True)
class GroupShape:
    """One worker group: replicas bounds and each pod's resources."""

    min_replicas: int
    max_replicas: int
    cpus: int
    memory_gi: int
    gpus: int = 0


def _size(stage: StageSpec, bound: Bound) -> int:
    if isinstance(stage.concurrency, tuple):
        return stage.concurrency[0 if bound == "min" else 1]
    return stage.concurrency


def _gpu_actors(spec: JobSpec, bound: Bound) -> list[tuple[float, float]]:
    """Return ``(num_gpus, num_cpus)`` of every GPU actor at the pools' ``bound`` size."""
    return [
        (stage.num_gpus, stage.num_cpus)
        for stage in spec.pools().values() if stage.num_gpus > 0
        for _ in range(_size(stage, bound))
    ]


def _pack(actors: list[tuple[float, float]], capacity: float) -> list[list[tuple[float, float]]]:
    """Pack actors into pods of ``capacity`` GPUs, first-fit-decreasing (Ray never splits an actor across nodes)."""
    pods: list[list[tuple[float, float]]] = []
    for actor in sorted(actors, reverse=True):
        pod = next((p for p in pods if sum(g for g, _ in p) + actor[0] <= capacity + _EPSILON), None)
        if pod is None:
            pods.append(pod := [])
        pod.append(actor)
    return pods


def default_gpus_per_pod(spec: JobSpec) -> int:
    """Return the GPUs of the largest GPU actor, rounded up (at least 1)."""
    return max([math.ceil(g - _EPSILON) for g, _ in _gpu_actors(spec, "max")] + [1])


def gpu_group(spec: JobSpec, gpus_per_pod: int | None = None) -> GroupShape | None:
    """Return the GPU worker group for ``spec``, or ``None`` when no stage uses a GPU."""
    gpus = gpus_per_pod or default_gpus_per_pod(spec)
    largest = _gpu_actors(spec, "max")
    if not largest:
        return None
    if max(g for g, _ in largest) > gpus + _EPSILON:
        raise ValueError(f"a stage asks for more GPUs per actor than a {gpus}-GPU pod has")
    pods = _pack(largest, gpus)
    cpus = math.ceil(max(sum(c for _, c in pod) for pod in pods) - _EPSILON) + GPU_POD_SPARE_CPUS
    return GroupShape(
        min_replicas=len(_pack(_gpu_actors(spec, "min"), gpus)), max_replicas=len(pods),
        cpus=cpus, memory_gi=GPU_POD_MEMORY_PER_GPU_GI * gpus, gpus=gpus,
    )


def _cpu_demand(spec: JobSpec, bound: Bound) -> float:
    actors = sum(s.num_cpus * _size(s, bound) for s in spec.pools().values() if s.num_gpus == 0)
    return actors + TASK_CPUS_PER_GPU_ACTOR * len(_gpu_actors(spec, bound)) + BASE_TASK_CPUS


def cpu_group(spec: JobSpec) -> GroupShape:
    """Return the CPU-only worker group: CPU actors plus read, image-encoding and write tasks."""
    def pods(bound: Bound) -> int:
        return max(1, math.ceil(_cpu_demand(spec, bound) / CPU_POD_CPUS - _EPSILON))

    return GroupShape(
        min_replicas=pods("min"), max_replicas=pods("max"),
        cpus=CPU_POD_CPUS, memory_gi=CPU_POD_MEMORY_PER_CPU_GI * CPU_POD_CPUS,
    )


def _resources(cpus: int, memory_gi: int, gpus: int = 0) -> dict[str, Any]:
    amounts = {"cpu": str(cpus), "memory": f"{memory_gi}Gi"}
    limits = {**amounts, "nvidia.com/gpu": str(gpus)} if gpus else dict(amounts)
    return {"requests": amounts, "limits": limits}


def _container(name: str, image: str, resources: dict[str, Any], *, token: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": resources,
        "envFrom": [{"secretRef": {"name": STORAGE_SECRET, "optional": True}}],
    }
    if token:  # Ray token auth on every node (RAY_AUTH_MODE must match cluster-wide)
        container["env"] = [
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": "auth_token"}}},
        ]
    return container


def _worker_group(name: str, image: str, shape: GroupShape, *, token: bool) -> dict[str, Any]:
    resources = _resources(shape.cpus, shape.memory_gi, shape.gpus)
    pod: dict[str, Any] = {"containers": [_container("ray-worker", image, resources, token=token)]}
    if shape.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "groupName": name,
        "replicas": shape.min_replicas,
        "minReplicas": shape.min_replicas,
        "maxReplicas": shape.max_replicas,
        "rayStartParams": {},
        "template": {"spec": pod},
    }


def ray_version() -> str:
    """Return the installed Ray version (the image must run the same)."""
    return version("ray")


def default_image() -> str:
    """Return ``pixelmill:<version>``, the tag the README builds from cluster/Dockerfile."""
    try:
        return f"pixelmill:{version('pixelmill')}"
    except PackageNotFoundError:
        return "pixelmill:latest"


def ray_cluster_spec(
    spec: JobSpec, *, image: str, gpus_per_pod: int | None = None, token: bool = False, spec_config: str | None = None
) -> dict[str, Any]:
    """Return a KubeRay ``RayClusterSpec`` shaped by the spec's stages.

    Args:
        token: turn on Ray token auth (a standing cluster that users submit to).
        spec_config: a ConfigMap holding the job spec, mounted on the head at ``/etc/pixelmill``.
    """
    head = _container("ray-head", image, _resources(HEAD_CPUS, int(HEAD_MEMORY[:-2])), token=token)
    head["ports"] = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    head_pod: dict[str, Any] = {"containers": [head]}
    if spec_config:
        head["volumeMounts"] = [{"name": "job-spec", "mountPath": SPEC_MOUNT}]
        head_pod["volumes"] = [{"name": "job-spec", "configMap": {"name": spec_config}}]
    groups = [("gpu", gpu_group(spec, gpus_per_pod)), ("cpu", cpu_group(spec))]
    return {
        "rayVersion": ray_version(),
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"idleTimeoutSeconds": 300},
        "headGroupSpec": {
            # num-cpus 0: no task or actor lands on the head, which runs the driver and the GCS.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {"spec": head_pod},
        },
        "workerGroupSpecs": [_worker_group(name, image, shape, token=token) for name, shape in groups if shape],
    }


def resource_name(stem: str) -> str:
    """Return a DNS-1123 name ``pixelmill-<stem>`` short enough for KubeRay's derived pod names."""
    clean = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-") or "job"
    return f"pixelmill-{clean}"[:30].rstrip("-")


def ray_cluster(spec: JobSpec, *, name: str, image: str, gpus_per_pod: int | None = None) -> dict[str, Any]:
    """Return a standing RayCluster (token auth on) sized for ``spec``; submit to it with ``pixelmill submit``."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "pixelmill"}},
        "spec": ray_cluster_spec(spec, image=image, gpus_per_pod=gpus_per_pod, token=True),
    }


def spec_config_map(spec: JobSpec, *, name: str) -> dict[str, Any]:
    """Return the ConfigMap holding the resolved spec (``ray.address: auto``) as ``job.yaml``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-spec"},
        "data": {"job.yaml": spec_yaml(cluster_spec(spec))},
    }


def ray_job(
    spec: JobSpec, *, name: str, image: str, gpus_per_pod: int | None = None, job_name: str | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """Return a RayJob that creates a cluster shaped by ``spec``, runs it, and deletes the cluster.

    Args:
        job_name: the RayJob's name (default ``name``).
        output: an ``--output`` override on the entrypoint (the CronJob's dated path).
    """
    command = entrypoint(f"{SPEC_MOUNT}/job.yaml")
    if output:
        command += f" --output {output}"
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": job_name or name, "labels": {"app.kubernetes.io/name": "pixelmill"}},
        "spec": {
            "entrypoint": command,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
            "rayClusterSpec": ray_cluster_spec(
                spec, image=image, gpus_per_pod=gpus_per_pod, spec_config=f"{name}-spec"
            ),
        },
    }


def cron_job(
    spec: JobSpec, *, name: str, image: str, schedule: str, gpus_per_pod: int | None = None
) -> list[dict[str, Any]]:
    """Return the documents of a nightly run: RBAC, the spec, a RayJob template and the CronJob.

    The CronJob's pod fills ``__RUN_DATE__`` (UTC, ``YYYY-MM-DD``) into the
    template and ``kubectl create``s the RayJob, so each night writes to
    ``<output.uri>/<date>`` and a second run on one day is refused by name.
    """
    account = f"{name}-scheduler"
    template = ray_job(
        spec, name=name, image=image, gpus_per_pod=gpus_per_pod, job_name=f"{name}-{RUN_DATE}",
        output=f"{spec.output.uri.rstrip('/')}/{RUN_DATE}",
    )
    script = (
        f'set -eu; RUN_DATE=$(date -u +%Y-%m-%d); '
        f'sed "s/{RUN_DATE}/$RUN_DATE/g" /templates/rayjob.yaml | kubectl create -f -'
    )
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": account},
            "rules": [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account}],
        },
        spec_config_map(spec, name=name),
        {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-rayjob-template"},
            "data": {"rayjob.yaml": _dump([template])},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": f"{name}-nightly"},
            "spec": {
                "schedule": schedule,
                "timeZone": "Etc/UTC",
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 3600,
                "jobTemplate": {"spec": {"backoffLimit": 2, "template": {"spec": {
                    "serviceAccountName": account,
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "create-rayjob", "image": KUBECTL_IMAGE, "command": ["/bin/sh", "-c", script],
                        "volumeMounts": [{"name": "template", "mountPath": "/templates"}],
                    }],
                    "volumes": [{"name": "template", "configMap": {"name": f"{name}-rayjob-template"}}],
                }}}},
            },
        },
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the spec and RayJob template in ConfigMaps) as ``|`` blocks, no line folding."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _represent_str)


def _dump(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=1000)


def render_files(
    spec: JobSpec, *, name: str, out_dir: Path, image: str | None = None, schedule: str | None = None,
    gpus_per_pod: int | None = None,
) -> list[Path]:
    """Write ``raycluster.yaml``, ``rayjob.yaml`` and (with ``schedule``) ``cronjob.yaml``; return their paths."""
    image = image or default_image()
    name = resource_name(name)
    files = {
        "raycluster.yaml": [ray_cluster(spec, name=name, image=image, gpus_per_pod=gpus_per_pod)],
        "rayjob.yaml": [
            spec_config_map(spec, name=name), ray_job(spec, name=name, image=image, gpus_per_pod=gpus_per_pod)
        ],
    }
    if schedule:
        files["cronjob.yaml"] = cron_job(spec, name=name, image=image, schedule=schedule, gpus_per_pod=gpus_per_pod)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_name, docs in files.items():
        (out_dir / file_name).write_text(_dump(docs))
    return [out_dir / file_name for file_name in files]
