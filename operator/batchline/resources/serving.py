"""Desired state of an LLMDeployment's children, built by pure functions of the (defaulted) object.

Nothing here talks to the API server: the same input always gives the same manifests, which
is what lets the reconcile loop skip writes when nothing changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchline import api
from batchline.config import OperatorConfig
from batchline.resources.common import (
    MODEL_MOUNT,
    RESTRICTED_CONTAINER,
    TRITON_UID,
    Manifest,
    cache_tool_container,
    image_pull_secrets,
    model_cache_volume,
    owner_reference,
    restricted_pod_security,
)


def selector_labels(name: str) -> dict[str, str]:
    return {api.LABEL_LLMD: name}


def common_labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/name": "triton",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "inference-server",
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
    }


def _metadata(llmd: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    meta = llmd["metadata"]
    return {
        "name": name or meta["name"],
        "namespace": meta["namespace"],
        "labels": common_labels(meta["name"]),
        "ownerReferences": [owner_reference(llmd)],
    }


def model_folder(key: str) -> str:
    """Where a build sits in the cache volume, by the operator's build key (an alias the builder writes)."""
    return f"{MODEL_MOUNT}/{key}"


def triton_args(key: str) -> list[str]:
    return [
        f"--model-repository={model_folder(key)}/repository",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--allow-metrics=true",
        "--metrics-config=summary_latencies=true",
        f"--http-port={api.TRITON_PORTS['http']}",
        f"--grpc-port={api.TRITON_PORTS['grpc']}",
        f"--metrics-port={api.TRITON_PORTS['metrics']}",
    ]


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _resources(res: Mapping[str, Any]) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": str(res["cpu"]), "memory": str(res["memory"])}
    limits: dict[str, Any] = {"memory": str(res["memory"])}
    gpus = res["gpu"]["count"]
    if gpus > 0:
        requests[api.GPU_RESOURCE] = str(gpus)
        limits[api.GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits}


def _scheduling(res: Mapping[str, Any]) -> dict[str, Any]:
    node_selector = dict(res.get("nodeSelector") or {})
    tolerations = list(res.get("tolerations") or [])
    if res["gpu"]["count"] > 0:
        if res["gpu"].get("product"):
            node_selector[api.GPU_PRODUCT_LABEL] = res["gpu"]["product"]
        tolerations.insert(0, {"key": api.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    out: dict[str, Any] = {"tolerations": tolerations} if tolerations else {}
    if node_selector:
        out["nodeSelector"] = node_selector
    return out


def model_check_container(key: str, config: OperatorConfig) -> dict[str, Any]:
    """Init step: Triton starts only on a complete build (a half-copied cache would fail in odd ways)."""
    return cache_tool_container("model-check", ["check", model_folder(key)], config, read_only=True)


def triton_container(spec: Mapping[str, Any], key: str, config: OperatorConfig) -> dict[str, Any]:
    serving = spec["serving"]
    return {
        "name": "triton",
        "image": serving.get("image") or config.image_for(serving["backend"]),
        "command": ["tritonserver"],
        "args": triton_args(key),
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in api.TRITON_PORTS.items()],
        "resources": _resources(spec["resources"]),
        # Model loading can take many minutes; the startup probe holds liveness off until then.
        "startupProbe": _probe("/v2/health/ready", period=10, failures=180),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=3),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": MODEL_MOUNT, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": RESTRICTED_CONTAINER,
    }


def openai_container(llmd: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The gateway beside Triton in the same pod, answering OpenAI requests on api.OPENAI_PORT for this one
    model: what an InferencePool's targetPort must be, since an inference gateway speaks OpenAI to pods."""
    spec, name = llmd["spec"], llmd["metadata"]["name"]
    upstream = f"{name}=127.0.0.1:{api.TRITON_PORTS['grpc']}?task={spec['model']['task']}"
    upstream += f"&triton_model={spec['serving']['modelName']}"
    return {
        "name": "openai",
        "image": config.operator_image,
        "command": ["batchline"],
        "args": ["gateway", "--host=0.0.0.0", f"--port={api.OPENAI_PORT}", f"--upstream={upstream}"],
        "ports": [{"name": "openai", "containerPort": api.OPENAI_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "openai"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "openai"}, "periodSeconds": 10},
        "securityContext": RESTRICTED_CONTAINER,
    }


def inference_pool(llmd: Mapping[str, Any], config: OperatorConfig) -> Manifest:
    """The LLMDeployment's pods as a Gateway API InferencePool, for clusters that run an inference gateway
    (its endpoint picker chooses among them and the gateway sends OpenAI requests to their OpenAI port)."""
    name = llmd["metadata"]["name"]
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": _metadata(llmd),
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "targetPorts": [{"number": api.OPENAI_PORT}],
            "endpointPickerRef": {
                "name": config.endpoint_picker.format(name=name),
                "port": {"number": config.endpoint_picker_port},
            },
        },
    }


def deployment(llmd: Mapping[str, Any], replicas: int, config: OperatorConfig, key: str) -> Manifest:
    """Triton serving the build `key`: the spec's build once it is in the cache, else the one running."""
    spec = llmd["spec"]
    name = llmd["metadata"]["name"]
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(TRITON_UID),
        "initContainers": [model_check_container(key, config)],
        "containers": [
            triton_container(spec, key, config),
            *([openai_container(llmd, config)] if config.inference_pools else []),
        ],
        "volumes": [
            model_cache_volume(config, llmd["metadata"]["namespace"], read_only=True),
            {
                "name": "dshm",
                "emptyDir": {"medium": "Memory", "sizeLimit": str(spec["resources"]["shmSize"])},
            },
        ],
        **_scheduling(spec["resources"]),
    }
    if pull_secrets := image_pull_secrets(config, [spec]):
        pod_spec["imagePullSecrets"] = pull_secrets
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(llmd),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            # Surge first, never drop below the current ready count while a new version rolls out.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": common_labels(name), "annotations": {api.ANNOTATION_BUILD_KEY: key}},
                "spec": pod_spec,
            },
        },
    }


def service(llmd: Mapping[str, Any]) -> Manifest:
    name = llmd["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(llmd),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in api.TRITON_PORTS.items()],
        },
    }


def pod_disruption_budget(llmd: Mapping[str, Any]) -> Manifest:
    """At most one replica down to voluntary disruptions (drains), so serving never stops entirely."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(llmd),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(llmd["metadata"]["name"])}},
    }


def pod_monitor(llmd: Mapping[str, Any], config: OperatorConfig | None = None) -> Manifest:
    """Scrapes the LLMDeployment's Triton pods. It carries config.monitor_labels (the chart's
    monitoring.labels), which a Prometheus that selects monitors by label (kube-prometheus-stack: release)
    needs to pick it up; they never replace the labels that name the LLMDeployment."""
    metadata = _metadata(llmd)
    if config is not None and config.monitor_labels:
        metadata["labels"] = {**dict(config.monitor_labels), **metadata["labels"]}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector_labels(llmd["metadata"]["name"])},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
            # Becomes the Prometheus label batchline_dev_llmdeployment, which the autoscaler groups by.
            "podTargetLabels": [api.LABEL_LLMD],
        },
    }


def endpoints(llmd: Mapping[str, Any]) -> dict[str, str]:
    host = f"{llmd['metadata']['name']}.{llmd['metadata']['namespace']}.svc"
    return {
        "http": f"http://{host}:{api.TRITON_PORTS['http']}",
        "grpc": f"{host}:{api.TRITON_PORTS['grpc']}",
        "metrics": f"http://{host}:{api.TRITON_PORTS['metrics']}/metrics",
    }


def children(
    llmd: Mapping[str, Any], replicas: int, config: OperatorConfig, serving_key: str | None
) -> list[Manifest]:
    """All children, in apply order; no Deployment until a build is there to serve."""
    out = [service(llmd), pod_disruption_budget(llmd)]
    if serving_key is not None:
        out.append(deployment(llmd, replicas, config, serving_key))
    if config.pod_monitors:
        out.append(pod_monitor(llmd, config))
    if config.inference_pools:
        out.append(inference_pool(llmd, config))
    return out
