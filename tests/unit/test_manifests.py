"""Desired Triton workload: what a platform team would check in `kubectl get deploy -o yaml`."""

from __future__ import annotations

from dataclasses import replace

from batchline import api
from batchline.build.spec_key import repository_key
from batchline.config import OperatorConfig
from batchline.resources import serving
from tests.crd_schema import llmd

CFG = OperatorConfig()


KEY = "0123456789abcdef"


def _pod(obj: dict) -> dict:
    return serving.deployment(obj, 2, CFG, KEY)["spec"]["template"]["spec"]


def test_triton_container_args_ports_and_probes() -> None:
    obj = llmd()
    c = _pod(obj)["containers"][0]
    assert c["image"] == CFG.python_image
    assert f"--model-repository=/models/{KEY}/repository" in c["args"]
    assert "--strict-readiness=true" in c["args"]
    assert "--metrics-config=summary_latencies=true" in c["args"]
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("http", 8000), ("grpc", 8001), ("metrics", 8002)]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 600


def test_gpu_limits_toleration_and_product_selector() -> None:
    obj = llmd(resources={"gpu": {"count": 2, "product": "NVIDIA-H100-80GB-HBM3"}, "nodeSelector": {"zone": "a"}})
    pod = _pod(obj)
    res = pod["containers"][0]["resources"]
    assert res["limits"][api.GPU_RESOURCE] == "2" and res["requests"][api.GPU_RESOURCE] == "2"
    assert res["requests"]["cpu"] == "2" and res["requests"]["memory"] == "8Gi"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"zone": "a", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_cpu_only_replica_has_no_gpu_request_or_toleration() -> None:
    pod = _pod(llmd(resources={"gpu": {"count": 0}}))
    assert api.GPU_RESOURCE not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_restricted_pod_security_and_shm() -> None:
    pod = _pod(llmd(resources={"shmSize": "2Gi"}))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_every_child_is_owned_and_labelled() -> None:
    obj = llmd(name="chat")
    kids = serving.children(obj, 1, CFG, serving_key=KEY)
    assert [k["kind"] for k in kids] == ["Service", "PodDisruptionBudget", "Deployment", "PodMonitor"]
    for kid in kids:
        ref = kid["metadata"]["ownerReferences"][0]
        assert ref == {
            "apiVersion": "batchline.dev/v1alpha1",
            "kind": "LLMDeployment",
            "name": "chat",
            "uid": "uid-1234",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert kid["metadata"]["labels"][api.LABEL_LLMD] == "chat"
    assert [k["kind"] for k in serving.children(obj, 1, replace(CFG, pod_monitors=False), serving_key=KEY)] == [
        "Service",
        "PodDisruptionBudget",
        "Deployment",
    ]


def test_rollout_never_drops_ready_capacity() -> None:
    dep = serving.deployment(llmd(), 3, CFG, KEY)
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_vllm_backend_gets_vllm_image_and_custom_image_wins() -> None:
    obj = llmd(serving={"backend": "vllm"}, quantization={"mode": "fp8"})
    assert _pod(obj)["containers"][0]["image"] == CFG.vllm_image
    obj = llmd(serving={"image": "registry.example/triton:1"})
    assert _pod(obj)["containers"][0]["image"] == "registry.example/triton:1"


def test_repository_key_changes_only_with_build_inputs() -> None:
    base = llmd()["spec"]
    assert repository_key(base) == repository_key(llmd(autoscaling={"maxReplicas": 9})["spec"])
    assert repository_key(base) == repository_key(llmd(name="other")["spec"])  # shared across LLMDeployments
    assert repository_key(base) != repository_key(llmd(quantization={"qualityGate": {"minTop1Agreement": 0.5}})["spec"])
    assert repository_key(base) != repository_key(llmd(quantization={"mode": "int8-weight-only"})["spec"])
    assert repository_key(base) != repository_key(llmd(serving={"maxBatchSize": 16})["spec"])


def test_model_cache_is_the_pvc_unless_local_mode_names_a_host_folder() -> None:
    volumes = {v["name"]: v for v in _pod(llmd())["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "batchline-model-cache", "readOnly": True}
    local = OperatorConfig(model_cache_host_path="/var/cache/batchline")
    pod = serving.deployment(llmd(), 1, local, KEY)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["hostPath"]["path"] == "/var/cache/batchline/team-a"  # one cache per namespace
    assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in pod["containers"][0]["volumeMounts"]


def test_no_deployment_until_a_build_is_there_to_serve() -> None:
    kinds = [k["kind"] for k in serving.children(llmd(), 1, replace(CFG, pod_monitors=False), serving_key=None)]
    assert kinds == ["Service", "PodDisruptionBudget"]


def test_triton_starts_only_after_the_init_step_checks_the_build() -> None:
    pod = _pod(llmd())
    check = pod["initContainers"][0]
    assert check["args"][:3] == ["cache", "check", f"/models/{KEY}"]
    assert check["image"] == CFG.checker_image != CFG.builder_image
    assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in check["volumeMounts"]
    assert check["securityContext"]["runAsNonRoot"] is True
    template = serving.deployment(llmd(), 1, CFG, KEY)["spec"]["template"]
    assert template["metadata"]["annotations"][api.ANNOTATION_BUILD_KEY] == KEY


def test_a_new_builder_image_changes_no_triton_pod() -> None:
    """Upgrading the chart's builder image must not roll every model: no Triton pod runs it."""
    bumped = OperatorConfig(builder_image="ghcr.io/batchline/batchline-builder:9.9.9")
    assert serving.deployment(llmd(), 2, bumped, KEY) == serving.deployment(llmd(), 2, CFG, KEY)
    checker = OperatorConfig(checker_image="registry.example/batchline-checker:0.2.0")
    pod = serving.deployment(llmd(), 2, checker, KEY)["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "registry.example/batchline-checker:0.2.0"


def test_triton_pods_get_the_charts_and_the_specs_pull_secrets() -> None:
    assert "imagePullSecrets" not in _pod(llmd())
    cfg = OperatorConfig(image_pull_secrets=("regcred", "mirror"))
    obj = llmd(serving={"image": "registry.example/triton:1"}, imagePullSecrets=[{"name": "team"}, {"name": "regcred"}])
    pod = serving.deployment(obj, 1, cfg, KEY)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}, {"name": "team"}]
    only_spec = serving.deployment(llmd(imagePullSecrets=[{"name": "team"}]), 1, CFG, KEY)["spec"]["template"]["spec"]
    assert only_spec["imagePullSecrets"] == [{"name": "team"}]


def test_pod_monitor_carries_the_labels_prometheus_selects_on() -> None:
    cfg = OperatorConfig(monitor_labels=(("release", "kube-prometheus-stack"),), pod_monitors=True)
    [monitor] = [k for k in serving.children(llmd(name="chat"), 1, cfg, serving_key=KEY) if k["kind"] == "PodMonitor"]
    labels = monitor["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack"
    assert labels[api.LABEL_LLMD] == "chat" and labels["app.kubernetes.io/instance"] == "chat"
    # A monitoring label never replaces one that names the LLMDeployment.
    clash = OperatorConfig(monitor_labels=(("app.kubernetes.io/instance", "x"),))
    assert serving.pod_monitor(llmd(name="chat"), clash)["metadata"]["labels"]["app.kubernetes.io/instance"] == "chat"
    assert "release" not in serving.pod_monitor(llmd(name="chat"), CFG)["metadata"]["labels"]


def test_settings_the_chart_passes_for_workloads() -> None:
    env = {
        "BATCHLINE_IMAGE_PULL_SECRETS": "regcred, mirror,,regcred",
        "BATCHLINE_MONITOR_LABELS": '{"release": "kube-prometheus-stack"}',
        "BATCHLINE_CHECKER_IMAGE": "registry.example/checker:1.0.0",
    }
    cfg = OperatorConfig.from_env(env)
    assert cfg.image_pull_secrets == ("regcred", "mirror")
    assert cfg.monitor_labels == (("release", "kube-prometheus-stack"),)
    assert cfg.checker_image == "registry.example/checker:1.0.0"
    assert OperatorConfig.from_env({"BATCHLINE_IMAGE_PULL_SECRETS": "", "BATCHLINE_MONITOR_LABELS": "{}"}) == CFG
    hash(cfg)  # the reconcile pass keys its cache on the config



def test_where_the_cluster_serves_inference_pools_each_model_gets_one_and_its_pods_answer_openai() -> None:
    from batchline.gateway.discovery import parse_upstream

    obj = llmd(name="chat", serving={"modelName": "llama"})
    obj["metadata"]["uid"] = "u1"
    cfg = replace(CFG, inference_pools=True, operator_image="registry.example/batchline-operator:1.2.3")
    kids = {k["kind"]: k for k in serving.children(obj, 2, cfg, serving_key=KEY)}
    pool = kids["InferencePool"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"] == kids["Deployment"]["spec"]["selector"]["matchLabels"]
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    assert pool["spec"]["endpointPickerRef"] == {"name": "chat-epp", "port": {"number": 9002}}
    assert pool["metadata"]["ownerReferences"][0]["uid"] == "u1"
    [triton, openai] = kids["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert triton["name"] == "triton" and openai["image"] == "registry.example/batchline-operator:1.2.3"
    assert openai["ports"][0]["containerPort"] == 8080
    # The sidecar's upstream is this pod's Triton, under the name clients ask for, in a form the gateway accepts.
    upstream = parse_upstream(next(a for a in openai["args"] if a.startswith("--upstream=")).split("=", 1)[1])
    assert (upstream.id, upstream.triton_model, [e.address for e in upstream.endpoints]) == (
        "chat", "llama", ["127.0.0.1:8001"]
    )
    assert openai["securityContext"]["allowPrivilegeEscalation"] is False
    plain = serving.children(obj, 2, replace(CFG, inference_pools=False), serving_key=KEY)
    assert "InferencePool" not in {k["kind"] for k in plain}
    assert len(next(k for k in plain if k["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]) == 1
