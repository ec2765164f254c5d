"""Fake nodes (optionally with NVIDIA GPUs) that KWOK keeps Ready and whose pods it runs."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from devcluster.kubeapi import ApiError, KubeApi

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"  # kwok runs with --manage-nodes-with-annotation-selector=<this>=fake
MANAGED_LABEL = "batchline.dev/local-node"  # "pool": made by `up`; "extra": add_node; "process": an agent's
RUNNER_LABEL = "batchline.dev/node-runner"  # "process" on process nodes
SPEC_ANNOTATION = "batchline.dev/local-node-spec"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: int = 8
    gpu_product: str = DEFAULT_GPU_PRODUCT
    cpu: str = "128"
    memory: str = "1Ti"
    pods: int = 250
    labels: Mapping[str, str] = field(default_factory=dict)
    role: str = "extra"

    def manifest(self) -> dict[str, Any]:
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods), "ephemeral-storage": "1Ti"}
        labels = {"type": "kwok", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "kubernetes.io/hostname": self.name, MANAGED_LABEL: self.role}
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
            labels |= _gpu_labels(self.gpus, self.gpu_product)
        labels |= self.labels
        fingerprint = hashlib.sha256(json.dumps([labels, resources], sort_keys=True).encode()).hexdigest()[:16]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels,
                         "annotations": {KWOK_ANNOTATION: "fake", SPEC_ANNOTATION: fingerprint}},
            "spec": {"taints": [GPU_TAINT] if self.gpus else []},
            "status": {"capacity": resources, "allocatable": resources},
        }


def _gpu_labels(gpus: int, product: str) -> dict[str, str]:
    """The labels NVIDIA's GPU feature discovery sets; memory (MiB) is read from the product name."""
    labels = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": product,
              "nvidia.com/gpu.count": str(gpus)}
    if size := re.search(r"(\d+)GB", product):
        labels["nvidia.com/gpu.memory"] = str(int(size.group(1)) * 1024)
    return labels


def gpu_pool(count: int, gpus: int, product: str) -> list[NodeSpec]:
    return [NodeSpec(f"gpu-node-{i}", gpus=gpus, gpu_product=product, role="pool") for i in range(count)]


def create(api: KubeApi, spec: NodeSpec) -> None:
    api.request("POST", "/api/v1/nodes", spec.manifest())


def delete(api: KubeApi, name: str) -> None:
    try:
        api.request("DELETE", f"/api/v1/nodes/{name}")
    except ApiError as err:
        if err.status != 404:
            raise


def reconcile_pool(api: KubeApi, pool: list[NodeSpec]) -> None:
    """Make the nodes `up` manages exactly `pool`: delete extra or changed ones, create missing ones."""
    wanted = {spec.name: spec for spec in pool}
    existing = api.get(f"/api/v1/nodes?labelSelector={MANAGED_LABEL}%3Dpool")["items"]
    for node in existing:
        name = node["metadata"]["name"]
        spec = wanted.get(name)
        if spec and node["metadata"]["annotations"].get(SPEC_ANNOTATION) == _fingerprint(spec):
            del wanted[name]
        else:
            delete(api, name)
    for spec in wanted.values():
        create(api, spec)


def _fingerprint(spec: NodeSpec) -> str:
    return str(spec.manifest()["metadata"]["annotations"][SPEC_ANNOTATION])


def is_ready(node: Mapping[str, Any]) -> bool:
    """Ready, and the node lifecycle controller has lifted the not-ready taint (or pods won't schedule)."""
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
    return ready and not any(t["key"] == NOT_READY_TAINT for t in node["spec"].get("taints", []))


def wait_ready(api: KubeApi, names: Iterable[str], timeout: float) -> None:
    pending = set(names)
    deadline = time.monotonic() + timeout
    while True:
        nodes = {n["metadata"]["name"]: n for n in api.get("/api/v1/nodes")["items"]}
        pending = {name for name in pending if not (name in nodes and is_ready(nodes[name]))}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes not Ready after {timeout:.0f}s: {sorted(pending)}")
        time.sleep(0.5)


def summary(node: Mapping[str, Any]) -> dict[str, Any]:
    """`runner` is "kwok" (pods are simulated), "process" (pods run as local processes) or "" (neither)."""
    labels = node["metadata"].get("labels", {})
    fake = KWOK_ANNOTATION in node["metadata"].get("annotations", {})
    return {"name": node["metadata"]["name"], "ready": is_ready(node),
            "gpus": int(node["status"].get("allocatable", {}).get(GPU_RESOURCE, 0)),
            "gpu_product": labels.get("nvidia.com/gpu.product"), "fake": fake,
            "runner": "kwok" if fake else labels.get(RUNNER_LABEL, ""),
            "cpu": node["status"].get("allocatable", {}).get("cpu")}
