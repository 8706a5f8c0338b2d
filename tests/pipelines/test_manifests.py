"""Kubernetes manifests: the files in cluster/ and ``pixelmill cluster render`` output parse, carry
KubeRay's required fields, follow the spec's resources, and the Dockerfile's pins match pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from pipelines import manifests
from pipelines.cli import main
from pipelines.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
DEMO = REPO / "examples" / "demo.yaml"
# The render that cluster/*.yaml are (their header comments say so).
STATIC_RENDER = [
    "cluster", "render", str(DEMO), "--input", "s3://my-bucket/prompts/", "--output", "s3://my-bucket/images/demo",
    "--set", "stages.generate.num_gpus=1", "--set", "stages.generate.concurrency=[1,4]",
    "--image", "registry.example.com/pixelmill:0.1.0", "--schedule", "0 2 * * *",
]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(doc for doc in docs if doc["kind"] == kind)


def _render(tmp_path: Path, *extra: str) -> dict[str, list[dict[str, Any]]]:
    assert main([*STATIC_RENDER[:3], "--out", str(tmp_path), *extra]) == 0
    return {path.name: _docs(path) for path in tmp_path.glob("*.yaml")}


def _check_cluster_spec(spec: dict[str, Any]) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["template"]["spec"]["containers"]
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants strings
    assert spec["enableInTreeAutoscaling"] is True


def _check_ray_job(job: dict[str, Any]) -> None:
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["entrypoint"].startswith("python -m pipelines.cli run ")
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
    _check_cluster_spec(job["spec"]["rayClusterSpec"])


def _groups(cluster_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {group["groupName"]: group for group in cluster_spec["workerGroupSpecs"]}


def _limits(group: dict[str, Any]) -> dict[str, str]:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_static_files_have_kuberay_required_fields() -> None:
    cluster = _docs(CLUSTER / "raycluster.yaml")[0]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    _check_cluster_spec(cluster["spec"])
    assert {"gpu", "cpu"} == set(_groups(cluster["spec"]))
    _check_ray_job(_kind(_docs(CLUSTER / "rayjob.yaml"), "RayJob"))
    cron = _kind(_docs(CLUSTER / "cronjob.yaml"), "CronJob")
    assert cron["apiVersion"] == "batch/v1" and cron["spec"]["schedule"] == "0 2 * * *"
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    launcher = yaml.safe_load((CLUSTER / "cluster-launcher.yaml").read_text())
    assert launcher["provider"]["type"] == "aws" and launcher["head_node_type"] in launcher["available_node_types"]
    assert launcher["available_node_types"]["gpu"]["node_config"]["InstanceType"].startswith(("g", "p"))


def test_static_files_are_the_render_of_the_demo_spec(tmp_path: Path) -> None:
    rendered = _render(tmp_path, *STATIC_RENDER[3:])
    assert sorted(rendered) == ["cronjob.yaml", "raycluster.yaml", "rayjob.yaml"]
    for name, docs in rendered.items():
        assert _docs(CLUSTER / name) == docs, f"cluster/{name} drifted from the render in its header; re-render it"


def test_cron_template_becomes_a_dated_ray_job() -> None:
    docs = _docs(CLUSTER / "cronjob.yaml")
    template = next(doc for doc in docs if doc["kind"] == "ConfigMap" and "rayjob.yaml" in doc["data"])
    job = yaml.safe_load(template["data"]["rayjob.yaml"].replace(manifests.RUN_DATE, "2026-11-29"))
    _check_ray_job(job)
    assert job["metadata"]["name"] == "pixelmill-demo-2026-11-29"
    assert job["spec"]["entrypoint"].endswith("--output s3://my-bucket/images/demo/2026-11-29")
    cron = _kind(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert manifests.RUN_DATE in cron["containers"][0]["command"][-1]
    role = _kind(docs, "Role")
    assert role["rules"][0]["resources"] == ["rayjobs"] and "create" in role["rules"][0]["verbs"]
    assert _kind(docs, "RoleBinding")["subjects"][0]["name"] == cron["serviceAccountName"]


def test_spec_config_map_joins_the_cluster() -> None:
    config = _kind(_docs(CLUSTER / "rayjob.yaml"), "ConfigMap")
    shipped = load_spec(raw=yaml.safe_load(config["data"]["job.yaml"]))
    assert shipped.ray.address == "auto" and shipped.output.uri == "s3://my-bucket/images/demo"


@pytest.mark.parametrize(
    ("sets", "gpus_per_pod", "expected"),
    [
        (["stages.generate.num_gpus=1", "stages.generate.concurrency=[1,4]"], None, ("1", 1, 4)),
        (["stages.generate.num_gpus=2", "stages.generate.concurrency=[2,3]"], None, ("2", 2, 3)),
        (["stages.generate.num_gpus=0.5", "stages.generate.concurrency=4"], None, ("1", 2, 2)),
        (["stages.generate.num_gpus=1", "stages.generate.concurrency=[1,8]"], 4, ("4", 1, 2)),
        # first-fit-decreasing: [1, 1] + two 0.5 actors share the third pod; min [1] + 0.5 + 0.5 -> 2 pods
        (["stages.encode.num_gpus=0.5", "stages.generate.num_gpus=1", "stages.generate.concurrency=[1,2]",
          "stages.score.num_gpus=0.5", "placement.fuse_encode_generate=false"], None, ("1", 2, 3)),
        # fused encode+generate: one pool with the generate stage's resources, no encode pool
        (["stages.generate.num_gpus=1", "stages.generate.concurrency=[1,2]",
          "placement.fuse_encode_generate=true"], None, ("1", 1, 2)),
    ],
    ids=["1gpu-autoscale", "2gpu-actors", "half-gpu-pack", "4gpu-pods", "mixed-stages", "fused"],
)
def test_gpu_group_follows_the_stages(
    tmp_path: Path, sets: list[str], gpus_per_pod: int | None, expected: tuple[str, int, int]
) -> None:
    extra = [arg for item in sets for arg in ("--set", item)]
    extra += ["--gpus-per-pod", str(gpus_per_pod)] if gpus_per_pod else []
    job = _kind(_render(tmp_path, *extra)["rayjob.yaml"], "RayJob")
    gpu = _groups(job["spec"]["rayClusterSpec"])["gpu"]
    assert (_limits(gpu)["nvidia.com/gpu"], gpu["minReplicas"], gpu["maxReplicas"]) == expected


def test_cpu_requests_follow_num_cpus(tmp_path: Path) -> None:
    sets = ["stages.generate.num_gpus=1", "stages.generate.num_cpus=3", "stages.generate.concurrency=[1,2]",
            "stages.encode.num_cpus=4", "stages.encode.concurrency=4", "placement.fuse_encode_generate=false"]
    job = _kind(_render(tmp_path, *[arg for item in sets for arg in ("--set", item)])["rayjob.yaml"], "RayJob")
    groups = _groups(job["spec"]["rayClusterSpec"])
    assert _limits(groups["gpu"])["cpu"] == str(3 + manifests.GPU_POD_SPARE_CPUS)
    # CPU pods: encode 4 x 4 + score 0.5 + 2 task CPUs per GPU actor (2 at max) + base 2 = 22.5 -> 3 pods of 8
    assert (groups["cpu"]["minReplicas"], groups["cpu"]["maxReplicas"]) == (3, 3)
    assert _limits(groups["cpu"])["cpu"] == str(manifests.CPU_POD_CPUS)


def test_cpu_only_spec_has_no_gpu_group(tmp_path: Path) -> None:
    job = _kind(_render(tmp_path)["rayjob.yaml"], "RayJob")
    assert list(_groups(job["spec"]["rayClusterSpec"])) == ["cpu"]
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def _pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(dep).name: str(Requirement(dep).specifier) for dep in project["dependencies"]}


def test_dockerfile_pins_match_pyproject() -> None:
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    pins = _pins()
    assert pins["ray"] == f"=={args['RAY_VERSION']}"
    # the CPU/test install's torch pin lives in requirements-cpu.txt (scripts/setup.sh installs it)
    assert "requirements-cpu.txt" in (REPO / "scripts" / "setup.sh").read_text()
    setup_torch = re.search(r"^torch==(\S+)$", (REPO / "requirements-cpu.txt").read_text(), re.M).group(1)
    assert args["TORCH_VERSION"] == setup_torch
    assert Requirement(f"torch{pins['torch']}").specifier.contains(args["TORCH_VERSION"])
    assert '"ray[data,default]==${RAY_VERSION}"' in dockerfile and "pip install --no-cache-dir ." in dockerfile
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-\S+$", dockerfile, re.M)  # a pinned CUDA base, not :latest
    # Manifests name the same Ray version as the image.
    ray_version = _docs(CLUSTER / "raycluster.yaml")[0]["spec"]["rayVersion"]
    assert pins["ray"] == f"=={ray_version}" == f"=={manifests.ray_version()}"
