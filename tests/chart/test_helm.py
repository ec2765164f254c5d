"""The chart without a cluster: helm lint, helm template, Kubernetes schemas, values.schema.json,
restricted pod security, and that what it renders is what the operator reads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from batchline import operator_cli
from batchline.config import OperatorConfig
from batchline.report import metrics
from devcluster.binaries import KUBE_VERSION
from tests.chart.chart import (
    CHART,
    VALUE_SETS,
    Manifest,
    container,
    env,
    helm,
    of_kind,
    one,
    render,
    value_args,
)

NAMESPACED = CHART / "ci" / "namespaced-values.yaml"
STANDALONE = CHART / "ci" / "standalone-values.yaml"
# Custom resources that have no schema offline; the cluster tests apply the kopf ones for real.
NO_OFFLINE_SCHEMA = {"ClusterKopfPeering", "KopfPeering", "PodMonitor", "ServiceMonitor", "PrometheusRule"}


def _parse_operator_args(manifests: list[Manifest], pod_index: str = "1") -> argparse.Namespace:
    """The container's command line, parsed by the real `batchline operator` parser, after the
    kubelet's $(VAR) expansion."""
    c = container(manifests)
    assert c["command"] == ["batchline"]
    args = [a.replace("$(POD_INDEX)", pod_index) for a in c["args"]]
    parser = argparse.ArgumentParser(prog="batchline")
    operator_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(args)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict(values: tuple[Path, ...]) -> None:
    out = helm("lint", "--strict", str(CHART), f"--kube-version={KUBE_VERSION}", *value_args(values), check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_objects_match_kubernetes_schemas(values: tuple[Path, ...]) -> None:
    version = KUBE_VERSION.lstrip("v").rsplit(".", 1)[0] + ".0"
    unchecked = set()
    for manifest in render(values):
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unchecked.add(manifest["kind"])
    assert unchecked <= NO_OFFLINE_SCHEMA


def test_default_and_namespaced_render_the_expected_objects() -> None:
    kinds = sorted(m["kind"] for m in render())
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "StatefulSet",
                            "PodDisruptionBudget", "ClusterKopfPeering", "PersistentVolumeClaim", "ConfigMap"])
    namespaced = sorted(m["kind"] for m in render([NAMESPACED]))
    assert namespaced == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "Role", "RoleBinding",
                                 "RoleBinding", "Service", "StatefulSet", "PodDisruptionBudget", "KopfPeering",
                                 "KopfPeering", "PersistentVolumeClaim", "PersistentVolumeClaim", "ConfigMap",
                                 "ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"])


@pytest.mark.parametrize(
    ("sets", "error"),
    [
        pytest.param(["operator.peering.enabled=false"], "value must be 1", id="standalone-needs-one-replica"),
        pytest.param(["operator.watch.mode=namespaces"], "minItems", id="namespaces-mode-needs-namespaces"),
        pytest.param(["operator.watch.mode=everything"], "value must be one of", id="unknown-mode"),
        pytest.param(["operator.replica=3"], "additional properties 'replica' not allowed", id="typo"),
        pytest.param(["operator.env.bad-name=1"], "bad-name", id="env-name"),
        pytest.param(["modelCache.size=lots"], "does not match pattern", id="quantity"),
        pytest.param(["prometheus.url=prometheus:9090"], "does not match pattern", id="url"),
        pytest.param(["workloadImagePullSecrets[0].nam=regcred"], "additional properties 'nam' not allowed",
                     id="pull-secret-typo"),
        pytest.param(["monitoring.label.release=kps"], "additional properties 'label' not allowed",
                     id="monitoring-typo"),
    ],
)
def test_values_schema_rejects(sets: list[str], error: str) -> None:
    out = helm("template", "x", str(CHART), f"--kube-version={KUBE_VERSION}", *value_args((), sets), check=False)
    assert out.returncode != 0 and error in out.stderr, out.stderr


def test_operator_reads_the_settings_the_chart_sets() -> None:
    manifests = render([NAMESPACED])
    variables = {k: v for k, v in env(manifests).items() if isinstance(v, str)}
    config = OperatorConfig.from_env(variables)
    assert config.prometheus_url == "http://kube-prometheus-stack-prometheus.monitoring:9090"
    assert config.model_cache_pvc == OperatorConfig().model_cache_pvc == "batchline-model-cache"
    assert (config.python_image, config.vllm_image) == (OperatorConfig().python_image, OperatorConfig().vllm_image)
    assert config.resync_seconds == OperatorConfig().resync_seconds
    assert metrics.exporter_port(variables) == 8080
    # Generic settings (the autoscaler's query templates, anything else) pass through as they are.
    assert variables["BATCHLINE_LATENCY_QUERY"].startswith("max(nv_inference_request_summary_us{")
    assert variables["BATCHLINE_EXAMPLE_SETTING"] == "on"
    assert variables["HF_HUB_OFFLINE"] == "1"
    assert "BATCHLINE_METRICS_PORT" not in env(render([STANDALONE]))
    # Workload pods: the pull secrets, the checker image and the labels of the operator's PodMonitors.
    assert config.image_pull_secrets == ("regcred",)
    assert config.checker_image == "registry.example/batchline-checker:0.1.0"
    assert config.monitor_labels == (("release", "kube-prometheus-stack"),)


def test_default_values_give_the_operators_own_defaults() -> None:
    """Nothing drifts between values.yaml and config.py: by default the chart changes no setting."""
    variables = {k: v for k, v in env(render()).items() if isinstance(v, str)}
    assert OperatorConfig.from_env(variables) == OperatorConfig()


def test_peering_mode_args_and_objects() -> None:
    manifests = render()
    args = _parse_operator_args(manifests)
    [peering] = of_kind(manifests, "ClusterKopfPeering")
    assert (args.peering, args.priority, args.standalone, args.namespace) == (
        peering["metadata"]["name"], 1, False, None)
    assert args.liveness == "http://0.0.0.0:8081/healthz"
    assert env(manifests)["POD_INDEX"] == {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}
    assert env(manifests)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    sts = one(manifests, "StatefulSet")
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["podManagementPolicy"] == "Parallel"


def test_namespaced_mode_args_and_peering_per_namespace() -> None:
    manifests = render([NAMESPACED])
    args = _parse_operator_args(manifests)
    assert args.namespace == ["team-a", "team-b"] and args.verbose
    peerings = of_kind(manifests, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"team-a", "team-b"}
    assert {p["metadata"]["name"] for p in peerings} == {args.peering}


def test_standalone_mode() -> None:
    manifests = render([STANDALONE])
    args = _parse_operator_args(manifests)
    assert args.standalone and args.peering is None
    assert one(manifests, "StatefulSet")["spec"]["replicas"] == 1
    assert not of_kind(manifests, "PodDisruptionBudget")
    assert container(manifests)["image"] == f"ghcr.io/batchline/batchline-operator@sha256:{'0' * 64}"
    rules = one(manifests, "ClusterRole")["rules"]
    assert not [r for r in rules if "kopf.dev" in r["apiGroups"]]


def _rules(manifest: Manifest) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in manifest["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def test_rbac_cluster_mode_has_no_wildcards_secrets_or_deletes_beyond_build_jobs() -> None:
    [role] = of_kind(render(), "ClusterRole")
    granted = _rules(role)
    assert not [g for g in granted if "*" in g]
    assert not [g for g in granted if g[1] == "secrets"]
    assert [g for g in granted if g[2] in ("delete", "deletecollection")] == [("batch", "jobs", "delete")]
    # ConfigMaps: the operator patches only the model-cache catalogue.
    [patch] = [r for r in role["rules"] if r["resources"] == ["configmaps"] and "patch" in r["verbs"]]
    assert patch["resourceNames"] == ["batchline-model-cache"] and patch["verbs"] == ["patch"]
    peering_patch = [r for r in role["rules"] if "patch" in r["verbs"] and r["resources"] == ["clusterkopfpeerings"]]
    assert [r["resourceNames"] for r in peering_patch] == [["bl-batchline"]]


def test_rbac_namespaced_mode_keeps_namespaced_rights_in_roles() -> None:
    manifests = render([NAMESPACED])
    [cluster_role] = of_kind(manifests, "ClusterRole")
    assert _rules(cluster_role) == {
        ("", "nodes", "list"), ("", "nodes", "watch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"), ("", "namespaces", "watch"),
    }
    roles = of_kind(manifests, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {"team-a", "team-b"}
    assert _rules(roles[0]) == _rules(roles[1])
    [cluster_mode] = of_kind(render(), "ClusterRole")
    cluster_only = {("", "nodes"), ("apiextensions.k8s.io", "customresourcedefinitions"),
                    ("kopf.dev", "clusterkopfpeerings")}
    namespaced_part = {g for g in _rules(cluster_mode) if g[:2] not in cluster_only}
    assert {g for g in _rules(roles[0]) if g[1] != "kopfpeerings"} == namespaced_part
    bindings = of_kind(manifests, "RoleBinding") + of_kind(manifests, "ClusterRoleBinding")
    sa = one(manifests, "ServiceAccount")["metadata"]
    assert {(s["name"], s["namespace"]) for b in bindings for s in b["subjects"]} == {(sa["name"], sa["namespace"])}


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standard "restricted" profile, as far as this chart's pods can touch it."""
    out = []
    psc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(flag)
    out += [f"volume {v['name']}" for v in pod.get("volumes") or [] if not set(v) - {"name"} <= RESTRICTED_VOLUMES]
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
            out.append(f"{c['name']}: runAsNonRoot")
        if (sc.get("runAsUser", psc.get("runAsUser")) or 1) == 0:
            out.append(f"{c['name']}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{c['name']}: seccompProfile")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c['name']}: allowPrivilegeEscalation")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{c['name']}: capabilities")
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
    return out


@pytest.mark.parametrize("values", VALUE_SETS)
def test_pods_meet_the_restricted_pod_security_standard(values: tuple[Path, ...]) -> None:
    manifests = render(values)
    pods = [m["spec"]["template"]["spec"] for m in manifests if m["kind"] in ("StatefulSet", "Deployment", "Job")]
    assert pods
    for pod in pods:
        assert _restricted_violations(pod) == []
        assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in pod["containers"])


def test_selectors_and_port_names_line_up() -> None:
    manifests = render([NAMESPACED])
    sts = one(manifests, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in container(manifests)["ports"]}
    svc = one(manifests, "Service")
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    for selector in (svc["spec"]["selector"], one(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     one(manifests, "ServiceMonitor")["spec"]["selector"]["matchLabels"],
                     one(manifests, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
                     sts["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    policy_ports = {p["port"] for rule in one(manifests, "NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]}
    assert policy_ports == ports
    assert container(manifests)["livenessProbe"]["httpGet"]["port"] in ports


def test_triton_pod_monitor_selects_and_labels_like_the_operators_own() -> None:
    from batchline.resources.serving import common_labels, pod_monitor

    monitor = one(render([NAMESPACED]), "PodMonitor")
    own = pod_monitor({"metadata": {"name": "chat", "namespace": "team-a", "uid": "u"}})
    assert monitor["spec"]["selector"]["matchLabels"].items() <= common_labels("chat").items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    # The same target labels as the operator's per-object PodMonitors, so queries work with either.
    assert monitor["spec"]["podTargetLabels"] == own["spec"]["podTargetLabels"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_every_monitor_carries_the_monitoring_labels() -> None:
    """kube-prometheus-stack selects monitors and rules by its release label: monitoring.labels puts it on the
    chart's ServiceMonitor, PodMonitor and PrometheusRule and, through the operator, on its own PodMonitors."""
    from batchline.resources.serving import pod_monitor

    sets = ["monitoring.labels.release=kps", "metrics.serviceMonitor.enabled=true", "tritonPodMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true", "metrics.serviceMonitor.additionalLabels.only=sm"]
    manifests = render(sets=sets)
    monitors = [m for m in manifests if m["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule")]
    assert sorted(m["kind"] for m in monitors) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kps", monitor["kind"]
    assert one(manifests, "ServiceMonitor")["metadata"]["labels"]["only"] == "sm"
    config = OperatorConfig.from_env({k: v for k, v in env(manifests).items() if isinstance(v, str)})
    own = pod_monitor({"metadata": {"name": "chat", "namespace": "llm", "uid": "u"}}, config)
    assert own["metadata"]["labels"]["release"] == "kps"


def test_model_cache_claims() -> None:
    [default] = of_kind(render(), "PersistentVolumeClaim")
    assert default["metadata"]["namespace"] == "batchline"
    assert default["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    claims = of_kind(render([NAMESPACED]), "PersistentVolumeClaim")
    assert {c["metadata"]["namespace"] for c in claims} == {"team-a", "team-b"}
    for claim in claims:
        assert claim["metadata"]["name"] == OperatorConfig().model_cache_pvc
        assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "fast-rwx",
                                 "resources": {"requests": {"storage": "500Gi"}}}
        assert "annotations" not in claim["metadata"]


def test_dashboard_configmap_carries_the_sidecar_label_and_the_dashboard() -> None:
    cm = one(render([NAMESPACED]), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Batchline"}
    assert json.loads(cm["data"]["batchline.json"]) == json.loads((CHART / "dashboards" / "batchline.json").read_text())


GATEWAY = ["gateway.enabled=true", "gateway.podMonitor.enabled=true", "gateway.apiKeys.secretName=gateway-keys"]


def _gateway(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in of_kind(manifests, kind) if m["metadata"]["name"].endswith("-gateway")]


def test_gateway_is_off_by_default() -> None:
    assert not [m for m in render() if m["metadata"]["name"].endswith("-gateway")]


@pytest.mark.parametrize("values", [(), (NAMESPACED,)], ids=["cluster", "namespaced"])
def test_gateway_renders_valid_restricted_objects(values: tuple[Path, ...]) -> None:
    out = helm("lint", "--strict", str(CHART), f"--kube-version={KUBE_VERSION}", *value_args(values, GATEWAY),
               check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    manifests = render(values, GATEWAY)
    version = KUBE_VERSION.lstrip("v").rsplit(".", 1)[0] + ".0"
    for manifest in manifests:
        if manifest["kind"] not in NO_OFFLINE_SCHEMA:
            kubernetes_validate.validate(manifest, version, strict=True)
    [deployment] = _gateway(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert _restricted_violations(pod) == []
    assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in pod["containers"])
    assert [m["kind"] for m in _gateway(manifests, "PodDisruptionBudget")] == ["PodDisruptionBudget"]


def test_gateway_args_parse_with_the_gateway_cli_and_follow_the_watch_mode() -> None:
    from batchline.gateway import cli as gateway_cli

    def parsed(values: tuple[Path, ...]) -> argparse.Namespace:
        [deployment] = _gateway(render(values, GATEWAY), "Deployment")
        [c] = deployment["spec"]["template"]["spec"]["containers"]
        assert c["command"] == ["batchline"]
        parser = argparse.ArgumentParser(prog="batchline")
        gateway_cli.register(parser.add_subparsers(dest="command"))
        return parser.parse_args(c["args"])

    cluster = parsed(())
    assert cluster.namespace is None and cluster.upstream is None and cluster.port == 8080
    assert (cluster.max_waiting, cluster.hold_timeout, cluster.max_in_flight_per_replica) == (100, 60.0, 64)
    assert cluster.api_key_file == "/etc/batchline-gateway/keys/keys"
    [deployment] = _gateway(render(sets=GATEWAY), "Deployment")
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert cluster.drain_seconds > 0 and cluster.drain_seconds + cluster.shutdown_timeout < grace
    assert parsed((NAMESPACED,)).namespace == ["team-a", "team-b"]


def test_gateway_shutdown_must_fit_the_grace_period() -> None:
    out = helm("template", "bl", str(CHART), f"--kube-version={KUBE_VERSION}",
               *value_args((), [*GATEWAY, "gateway.shutdownTimeoutSeconds=58"]), check=False)
    assert out.returncode != 0 and "terminationGracePeriodSeconds" in out.stderr


def test_gateway_rbac_only_reads_llmdeployments_and_endpointslices() -> None:
    expected = {("batchline.dev", "llmdeployments", verb) for verb in ("get", "list", "watch")}
    expected |= {("discovery.k8s.io", "endpointslices", verb) for verb in ("get", "list", "watch")}
    manifests = render(sets=GATEWAY)
    [role] = _gateway(manifests, "ClusterRole")
    assert _rules(role) == expected
    [binding] = _gateway(manifests, "ClusterRoleBinding")
    [account] = _gateway(manifests, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "batchline"}]
    namespaced = render([NAMESPACED], GATEWAY)
    assert not _gateway(namespaced, "ClusterRole")
    roles = _gateway(namespaced, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {"team-a", "team-b"}
    assert all(_rules(r) == expected for r in roles)


def test_gateway_service_monitor_and_keys_line_up() -> None:
    manifests = render(sets=[*GATEWAY, "monitoring.labels.release=kps"])
    [deployment] = _gateway(manifests, "Deployment")
    template = deployment["spec"]["template"]
    [c] = template["spec"]["containers"]
    ports = {p["name"] for p in c["ports"]}
    [service] = _gateway(manifests, "Service")
    [monitor] = _gateway(manifests, "PodMonitor")
    for selector in (service["spec"]["selector"], monitor["spec"]["selector"]["matchLabels"],
                     deployment["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= template["metadata"]["labels"].items()
    # Neither selects the operator's pods.
    operator_labels = one(manifests, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= operator_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["http"]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["readinessProbe"]["httpGet"]["port"] in ports
    [keys] = [v for v in template["spec"]["volumes"] if v["name"] == "api-keys"]
    assert keys["secret"]["secretName"] == "gateway-keys"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "api-keys")
    assert mount["readOnly"] and "--api-key-file=" + mount["mountPath"] + "/keys" in c["args"]


@pytest.mark.parametrize("values", [(), (NAMESPACED,)], ids=["cluster", "namespaced"])
def test_a_network_policy_lets_only_the_gateway_reach_the_triton_api_ports(values: tuple[Path, ...]) -> None:
    sets = [*GATEWAY, "gateway.networkPolicy.enabled=true"]
    manifests = render(values, sets, namespace="ops")
    policies = [m for m in of_kind(manifests, "NetworkPolicy") if m["metadata"]["name"].endswith("-triton")]
    [deployment] = _gateway(manifests, "Deployment")
    gateway_pods = deployment["spec"]["template"]["metadata"]["labels"]
    # One in each namespace whose LLMDeployments the operator serves (where their Triton pods run).
    watched = yaml.safe_load(NAMESPACED.read_text())["operator"]["watch"]["namespaces"] if values else ["ops"]
    assert {p["metadata"]["namespace"] for p in policies} == set(watched)
    for policy in policies:
        kubernetes_validate.validate(policy, KUBE_VERSION.lstrip("v").rsplit(".", 1)[0] + ".0", strict=True)
        spec = policy["spec"]
        assert spec["podSelector"]["matchExpressions"] == [{"key": "batchline.dev/llmdeployment", "operator": "Exists"}]
        api_rule, metrics_rule = spec["ingress"]
        [peer] = api_rule["from"]
        assert peer["podSelector"]["matchLabels"].items() <= gateway_pods.items()
        assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ops"}
        assert sorted(p["port"] for p in api_rule["ports"]) == [8000, 8001]
        assert [p["port"] for p in metrics_rule["ports"]] == [8002] and "from" not in metrics_rule
    assert not [m for m in of_kind(render(values, GATEWAY, namespace="ops"), "NetworkPolicy")
                if m["metadata"]["name"].endswith("-triton")]
