"""The chart against the real local control plane: the API server validates everything it renders,
pods pass the restricted Pod Security admission, and the operator, started the way the chart's
StatefulSet starts it and holding only the chart's ServiceAccount token, goes through a
create/update/scale/delete cycle with a peering failover in between. The audit log of that run then
shows that the chart grants nothing the operator did not use.

The cycle runs in namespaces mode: a cluster-wide operator would also reconcile the LLMDeployments
of other tests in the shared control plane. Cluster mode is checked with access reviews instead.
The reverse happens too (other sessions' operators run cluster-wide and may act on this test's
objects first), so every claim about what the chart's operator did rests on audit events of its
own ServiceAccount, never on the objects' state alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
import yaml
from kubernetes import client, config

from batchline import api
from batchline.config import OperatorConfig
from batchline.resources.build_job import build_job
from batchline.resources.serving import children
from devcluster import audit
from devcluster.operator_process import OperatorProcess
from devcluster.process import free_ports
from tests.chart.chart import CHART, REPO, VALUE_SETS, Manifest, container, helm, of_kind, render
from tests.crd_schema import defaulted
from tests.integration.conftest import TINY_CHECKPOINT, kubectl, wait_for

pytestmark = pytest.mark.cluster

SOURCE = str(TINY_CHECKPOINT)  # built for real by a build Job on the process node
GPU_TOLERATION = '[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]'
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
NO_OPERATOR_CRDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # no Prometheus Operator here
# Reads kopf itself makes, besides the kinds the handlers watch (kopf/_core/reactor/observation.py and
# engines/peering.py): CRDs to notice kinds appearing, namespaces in namespaces mode, peering objects.
KOPF_READS = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"),
              ("kopf.dev", "kopfpeerings"), ("kopf.dev", "clusterkopfpeerings")}
# The kinds the operator server-side applies (manifests.children), as (apiGroup, resource).
APPLIED = {("", "services"), ("policy", "poddisruptionbudgets"), ("apps", "deployments"),
           ("monitoring.coreos.com", "podmonitors"), ("inference.networking.k8s.io", "inferencepools"),
           ("batch", "jobs")}
# Granted but not exercisable here: the operator applies PodMonitors and InferencePools only where their
# CRDs exist, and deletes a build Job only to replace a failed attempt (tests/integration/test_builds.py covers that).
UNEXERCISED_KINDS = {("monitoring.coreos.com", "podmonitors"), ("inference.networking.k8s.io", "inferencepools")}
UNEXERCISED = {(*kind, verb) for kind in UNEXERCISED_KINDS for verb in ("create", "patch")} | {
    ("batch", "jobs", "delete")}
Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def _create_namespace(kubeconfig: Path, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl(kubeconfig, "create", "namespace", name)
    kubectl(kubeconfig, "label", "namespace", name, *(f"{k}={v}" for k, v in RESTRICTED.items()))
    return name


@pytest.fixture(scope="module")
def chart_crds(cluster: Any) -> None:
    """The chart's CRDs, as `helm install` would create them on a fresh cluster. The LLMDeployment CRD
    comes from crds/ itself, like the integration tests' fixture, so a chart copy that is behind never
    rolls back the CRD that other tests in the shared control plane use."""
    kubectl(cluster.kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"),
            "-f", str(CHART / "crds" / "kopf-peering.yaml"))
    established = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    for plural in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev", f"{api.PLURAL}.{api.GROUP}"):
        # Polled rather than `kubectl wait`: a just-started API server on a loaded machine can take minutes.
        wait_for(lambda plural=plural: kubectl(cluster.kubeconfig, "get", f"crd/{plural}", "-o", established,
                                               check=False).stdout == "True", timeout=240, what=f"{plural} Established")
    # kopf finds the peering kinds through API discovery at startup, which lags Established a little;
    # an operator started in that moment would wait for its (mandatory) peering object forever.
    wait_for(lambda: "kopfpeerings" in kubectl(cluster.kubeconfig, "api-resources", "--api-group=kopf.dev",
                                               "-o", "name").stdout, what="kopf.dev in API discovery")


def _namespace_pair(cluster: Any) -> Iterator[tuple[str, str]]:
    """(release namespace, watched namespace), both enforcing the restricted Pod Security Standard."""
    made = (_create_namespace(cluster.kubeconfig, "blops"), _create_namespace(cluster.kubeconfig, "blwatch"))
    yield made
    for name in made:
        kubectl(cluster.kubeconfig, "delete", "namespace", name, "--wait=false", check=False)


namespaces = pytest.fixture(_namespace_pair, scope="module", name="namespaces")
dry_run_namespaces = pytest.fixture(_namespace_pair, scope="module", name="dry_run_namespaces")


def _install(cluster: Any, release: str, namespace: str, sets: list[str]) -> list[Manifest]:
    """helm install, then wait for the operator pods (KWOK runs them) to be Ready."""
    args = [f"--set={s}" for s in sets] + [f"--set-json=operator.tolerations={GPU_TOLERATION}"]
    helm("install", release, str(CHART), f"--namespace={namespace}", f"--kubeconfig={cluster.kubeconfig}", *args)
    sts = f"statefulset/{release}-batchline"
    kubectl(cluster.kubeconfig, "-n", namespace, "rollout", "status", sts, "--timeout=120s")
    return render(sets=sets, namespace=namespace, release=release)


def _uninstall(cluster: Any, release: str, namespace: str) -> None:
    helm("uninstall", release, f"--namespace={namespace}", f"--kubeconfig={cluster.kubeconfig}", check=False)


def _token_kubeconfig(cluster: Any, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount, with a token from the TokenRequest API."""
    token = kubectl(cluster.kubeconfig, "-n", namespace, "create", "token", service_account,
                    "--duration=2h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    user = f"system:serviceaccount:{namespace}:{service_account}"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": admin["clusters"][0]["name"], "user": user}}],
        "current-context": user,
    }))
    path.chmod(0o600)
    return path


def _bind_model_cache(cluster: Any, namespace: str) -> str:
    """A PersistentVolume bound to the chart's model-cache claim: the local control plane has no
    provisioner, and KWOK never mounts it, but the Triton pods now schedule exactly as they would with
    a real volume, in a namespace that enforces the restricted Pod Security Standard."""
    name = f"model-cache-{namespace}"
    claim = OperatorConfig().model_cache_pvc
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
          "spec": {"capacity": {"storage": "1Ti"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                   "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": f"/tmp/{name}"},
                   "claimRef": {"namespace": namespace, "name": claim}}}
    kubectl(cluster.kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(pv))
    kubectl(cluster.kubeconfig, "-n", namespace, "wait", "--for=jsonpath={.status.phase}=Bound", "--timeout=60s",
            f"pvc/{claim}")
    return name


def _peers(cluster: Any, namespace: str, name: str) -> dict[str, int]:
    """Live peers (identity -> priority) in the release's KopfPeering."""
    out = kubectl(cluster.kubeconfig, "-n", namespace, "get", "kopfpeering", f"{name}-batchline", "-o", "json")
    status = json.loads(out.stdout).get("status") or {}
    return {peer: info["priority"] for peer, info in status.items() if info.get("lifetime", 0) > 0}


def _paused(log: str) -> bool:
    """kopf starts paused when peering is mandatory, and logs only changes: a replica is paused until it
    logs "Resuming", and again after a later "Pausing"."""
    return log.rfind("Pausing operations") >= log.rfind("Resuming operations")


class ChartReplica(OperatorProcess):
    """One operator replica, started with the chart's container command, args and env, plus what the
    kubelet would add (the downward-API values). Local changes: free health and metrics ports, since
    both replicas share this machine, and a 3 s resync to keep the test short."""

    def __init__(self, manifests: list[Manifest], index: int, ports: tuple[int, int], kubeconfig: Path,
                 log_path: Path) -> None:
        c = container(manifests)
        sts = next(m for m in manifests if m["kind"] == "StatefulSet")
        health, metrics_port = ports
        self.argv = [str(Path(sys.executable).parent / c["command"][0])] + [
            f"--liveness=http://127.0.0.1:{health}/healthz" if a.startswith("--liveness=") else
            a.replace("$(POD_INDEX)", str(index)) for a in c["args"]]
        chart_env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        super().__init__(kubeconfig, log_path, {
            **chart_env, "POD_ID": f"{sts['metadata']['name']}-{index}", "POD_INDEX": str(index),
            "BATCHLINE_METRICS_PORT": str(metrics_port), "BATCHLINE_RESYNC_SECONDS": "3"})

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHLINE_", "KUBECONFIG"))}
        self._proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**base, **self.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"})


@dataclass
class Cycle:
    manifests: list[Manifest]
    events: list[dict[str, Any]]  # audit events of the chart ServiceAccount's writes
    after_failover: list[dict[str, Any]]  # the part of them made once the standby had taken over
    logs: str


def _received(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()


def _writes(events: list[dict[str, Any]]) -> set[Grant]:
    """(apiGroup, resource[/subresource], verb) of each audited write."""
    out = set()
    for event in events:
        ref = event["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return out


def _custom(cluster: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig)))


def _llmd(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    return cast(dict[str, Any], custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL,
                                                                    "chat"))


def _settled(custom: client.CustomObjectsApi, namespace: str, ready: int) -> bool:
    obj = _llmd(custom, namespace)
    status = obj.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return (status.get("observedGeneration") == obj["metadata"]["generation"] and status.get("readyReplicas") == ready
            and conditions.get("Ready") == "True" and conditions.get("Progressing") == "False")


def _deployment_replicas(cluster: Any, namespace: str) -> int:
    apps = client.AppsV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
    return int(apps.read_namespaced_deployment("chat", namespace).spec.replicas or 0)


@pytest.fixture(scope="module")
def cycle(cluster: Any, chart_crds: None, namespaces: tuple[str, str], tiny_checkpoint: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cycle]:
    """Install in namespaces mode with peering, run two replicas as the chart's ServiceAccount, and drive
    one LLMDeployment through create, update, scale, failover, scale down and delete."""
    ops, watched = namespaces
    release = "blt"
    sets = ["operator.watch.mode=namespaces", f"operator.watch.namespaces[0]={watched}",
            "builder.cpu=500m", "builder.memory=2Gi", "builder.backoffLimit=0"]
    manifests = _install(cluster, release, ops, sets)
    volume = _bind_model_cache(cluster, watched)
    tmp = tmp_path_factory.mktemp("chart-operator")
    service_account = f"{release}-batchline"
    kubeconfig = _token_kubeconfig(cluster, ops, service_account, tmp / "kubeconfig")
    ports = free_ports(4)
    replicas = [ChartReplica(manifests, i, (ports[2 * i], ports[2 * i + 1]), kubeconfig, tmp / f"replica-{i}.log")
                for i in (0, 1)]
    custom = _custom(cluster)
    since = time.time()
    try:
        standby, active = replicas
        # The active one first. A standby that starts alone is active until it sees its peer; once (the
        # CRD's storage still re-initializing, its watch retrying) it reconciled an object created
        # after it had logged the pause. Pods that start together can meet that moment in a real
        # rollout too; both apply the same desired state with server-side apply, so it is harmless.
        for replica in (active, standby):
            replica.start()
            replica.wait_for_log("Activity 'startup' succeeded", timeout=90)
        wait_for(lambda: _peers(cluster, watched, release) == {f"{service_account}-0": 0, f"{service_account}-1": 1},
                 what="both replicas in the peering")
        wait_for(lambda: not _paused(active.log_text()) and _paused(standby.log_text()), timeout=30,
                 what="replica 1 (the higher priority) active, replica 0 standing by")

        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "chat"},
                "spec": {"model": {"source": SOURCE}}}
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, watched, api.PLURAL, body)
        wait_for(lambda: _settled(custom, watched, 1), timeout=90, what="Ready after create")
        custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, watched, api.PLURAL, "chat",
                                              {"spec": {"serving": {"maxBatchSize": 16}}})
        wait_for(lambda: _llmd(custom, watched)["metadata"]["generation"] == 2 and _settled(custom, watched, 1),
                 timeout=90, what="Ready at generation 2 after update")
        custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, watched, api.PLURAL, "chat",
                                              {"spec": {"autoscaling": {"minReplicas": 2}}})
        wait_for(lambda: _settled(custom, watched, 2), timeout=90, what="2 ready replicas after scale-up")

        assert "batchline.controller.reconcile" not in standby.log_text(), "the standby wrote while paused"
        failover = time.time()
        active.stop()  # a clean exit removes it from the peering: the standby takes over at once
        wait_for(lambda: not _paused(standby.log_text()), timeout=30, what="the standby resumes")
        # Lowering maxReplicas below what runs forces a scale-down (minReplicas alone keeps what runs).
        custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, watched, api.PLURAL, "chat",
                                              {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 1}}})
        wait_for(lambda: _deployment_replicas(cluster, watched) == 1 and _settled(custom, watched, 1),
                 timeout=90, what="the former standby scales down")

        custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, watched, api.PLURAL, "chat")

        def gone() -> bool:
            try:
                _llmd(custom, watched)
            except client.ApiException as err:
                return err.status == 404
            return False

        wait_for(gone, timeout=60, what="LLMDeployment deleted")
        time.sleep(2)  # the audit event is written just after the response
        logs = "\n".join(r.log_text() for r in replicas)
        user = f"system:serviceaccount:{ops}:{service_account}"
        events = audit.write_events(cluster.state_dir, user, since)
        yield Cycle(manifests, events, [e for e in events if _received(e) > failover], logs)
    finally:
        for replica in replicas:
            replica.stop()
        _uninstall(cluster, release, ops)
        kubectl(cluster.kubeconfig, "delete", "persistentvolume", volume, "--wait=false", check=False)


def test_operator_runs_a_full_cycle_on_the_charts_rbac(cycle: Cycle) -> None:
    assert "orbidden" not in cycle.logs and " 403" not in cycle.logs, cycle.logs[-3000:]
    assert "Traceback" not in cycle.logs, cycle.logs[-3000:]
    wrote = _writes(cycle.events)
    for kind in APPLIED:
        if kind not in UNEXERCISED_KINDS:
            assert (*kind, "patch") in wrote, f"the chart's operator never applied {kind}"
    assert ("batchline.dev", "llmdeployments/status", "patch") in wrote
    # The scale-down after the failover was the former standby's own work.
    assert ("apps", "deployments", "patch") in _writes(cycle.after_failover)


def _granted(manifests: list[Manifest]) -> set[Grant]:
    return {(g, r, v) for m in manifests if m["kind"] in ("Role", "ClusterRole") for rule in m["rules"]
            for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def _handler_watches() -> set[tuple[str, str]]:
    """(group, plural) of every kind the operator's kopf handlers list and watch.

    kopf's registry has no public listing, so this reads the same per-kind registries kopf's own
    resource observer reads (kopf/_core/reactor/observation.py)."""
    import batchline.controller.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    handlers = [h for part in (registry._indexing, registry._watching, registry._spawning, registry._changing)
                for h in part.get_all_handlers()]
    selectors = [h.selector for h in handlers if h.selector is not None]
    return {(s.group or "", str(s.plural or s.any_name)) for s in selectors}


def test_chart_grants_only_what_the_operator_uses(cycle: Cycle) -> None:
    granted = _granted(cycle.manifests)
    used = _writes(cycle.events)
    # Applying a child that does not exist yet is authorized as create as well (see the next test);
    # whether this run's apply or another session's cluster-wide operator created it first is luck.
    used |= {(g, r, "create") for g, r, v in used if v == "patch" and (g, r) in APPLIED}
    reads = {(g, r, v) for g, r in _handler_watches() | KOPF_READS for v in ("list", "watch")}
    assert used <= granted
    assert {(g, r, v) for g, r in _handler_watches() for v in ("list", "watch")} <= granted
    unused = {g for g in granted if g not in used | reads | UNEXERCISED}
    assert unused == set(), f"granted but never used: {sorted(unused)}"
    # Every write kind the operator has must have been exercised, not just allowed.
    assert {g for g in granted if g[2] not in ("list", "watch")} - UNEXERCISED <= used


def test_applied_kinds_are_the_operators_children() -> None:
    llmd = {"metadata": {"name": "chat", "namespace": "ns", "uid": "u"},
            "spec": defaulted({"model": {"source": SOURCE}})}
    every_kind = OperatorConfig(pod_monitors=True, inference_pools=True)  # as on a cluster with both CRDs
    manifests = [*children(llmd, 1, every_kind, "key"), build_job([llmd], llmd["spec"], "key", 1, every_kind)]
    kinds = {(m["apiVersion"].rpartition("/")[0], m["kind"]) for m in manifests}
    assert kinds == {("", "Service"), ("policy", "PodDisruptionBudget"), ("apps", "Deployment"),
                     ("monitoring.coreos.com", "PodMonitor"), ("inference.networking.k8s.io", "InferencePool"),
                     ("batch", "Job")}
    assert {(g, f"{k.lower()}s") for g, k in kinds} == APPLIED


def test_server_side_apply_of_a_new_object_needs_create(cluster: Any, namespaces: tuple[str, str]) -> None:
    """Why the chart grants create on the children although the operator only ever sends PATCH."""
    ops, _ = namespaces
    user = f"system:serviceaccount:{ops}:ssa-probe"
    kubectl(cluster.kubeconfig, "-n", ops, "create", "serviceaccount", "ssa-probe")
    kubectl(cluster.kubeconfig, "-n", ops, "create", "role", "ssa-probe", "--verb=patch", "--resource=services")
    kubectl(cluster.kubeconfig, "-n", ops, "create", "rolebinding", "ssa-probe", "--role=ssa-probe",
            f"--serviceaccount={ops}:ssa-probe")
    service = yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe", "namespace": ops},
                              "spec": {"ports": [{"name": "http", "port": 80}]}})

    def apply() -> subprocess.CompletedProcess[str]:
        return kubectl(cluster.kubeconfig, "apply", "--server-side", f"--as={user}", "-f", "-", input=service,
                       check=False)

    # Once the Role has propagated, the refusal is about create, not patch.
    wait_for(lambda: 'cannot create resource "services"' in apply().stderr,
             what="a patch-only server-side apply of a new Service to be refused for lack of create")
    kubectl(cluster.kubeconfig, "-n", ops, "create", "role", "ssa-probe-create", "--verb=create",
            "--resource=services")
    kubectl(cluster.kubeconfig, "-n", ops, "create", "rolebinding", "ssa-probe-create", "--role=ssa-probe-create",
            f"--serviceaccount={ops}:ssa-probe")
    wait_for(lambda: apply().returncode == 0, what="the apply to pass with create added")


@pytest.mark.parametrize("values", VALUE_SETS)
def test_api_server_accepts_every_rendered_object(cluster: Any, chart_crds: None, dry_run_namespaces: tuple[str, str],
                                                  values: tuple[Path, ...]) -> None:
    ops, watched = dry_run_namespaces
    sets = [f"dashboards.namespace={ops}"]
    if any("namespaced" in v.name for v in values):
        sets.append(f"operator.watch.namespaces={{{watched}}}")
    manifests = [m for m in render(values, sets, namespace=ops, release="bldry") if m["kind"] not in NO_OPERATOR_CRDS]
    out = kubectl(cluster.kubeconfig, "apply", "--dry-run=server", "-f", "-",
                  input=yaml.safe_dump_all(manifests), check=False)
    assert out.returncode == 0, out.stderr
    assert "PodSecurity" not in out.stderr, out.stderr  # the namespaces warn on restricted violations
    assert len(out.stdout.splitlines()) == len(manifests)


def _can_i(cluster: Any, user: str, *args: str) -> bool:
    out = kubectl(cluster.kubeconfig, "auth", "can-i", f"--as={user}", *args, check=False)
    return out.stdout.strip() == "yes"


def test_cluster_mode_install_grants_cluster_wide_and_nothing_more(cluster: Any, chart_crds: None,
                                                                  namespaces: tuple[str, str]) -> None:
    ops, watched = namespaces
    release = "blc"
    try:
        manifests = _install(cluster, release, ops, ["modelCache.create=false"])
        assert of_kind(manifests, "ClusterKopfPeering")
        user = f"system:serviceaccount:{ops}:{release}-batchline"
        for verb, resource in (("list", "llmdeployments.batchline.dev"), ("watch", "deployments.apps"),
                               ("list", "pods"), ("watch", "poddisruptionbudgets.policy")):
            assert _can_i(cluster, user, verb, resource, "--all-namespaces"), (verb, resource)
        for verb, resource in (("create", "services"), ("patch", "deployments.apps"), ("create", "events")):
            assert _can_i(cluster, user, verb, resource, "-n", watched), (verb, resource)
        assert _can_i(cluster, user, "patch", "llmdeployments.batchline.dev", "--subresource=status", "-n", watched)
        assert _can_i(cluster, user, "patch", f"clusterkopfpeerings.kopf.dev/{release}-batchline")
        for verb, resource in (("get", "secrets"), ("delete", "deployments.apps"),
                               ("update", "llmdeployments.batchline.dev"), ("patch", "llmdeployments.batchline.dev"),
                               ("create", "pods"),
                               ("patch", "clusterkopfpeerings.kopf.dev/default"), ("patch", "nodes")):
            assert not _can_i(cluster, user, verb, resource, "-n", watched), (verb, resource)
    finally:
        _uninstall(cluster, release, ops)
