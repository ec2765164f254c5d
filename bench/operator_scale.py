"""How fast the operator converges N LLMDeployments, against the API server's own limit.

One run, on one local control plane:
  1. direct: a plain client creates the same children (Service, PDB, Deployment) for N objects;
  2. operator: N LLMDeployments are applied at once and the operator converges them (children
     exist and status.observedGeneration is current). They all want one build, which is already in
     the namespace's cache catalogue, so no build runs and each gets its Deployment at once.
Between the two, the controller-manager catches up with the direct side's Deployments, so its
backlog does not slow the API server on the operator side's clock.
Reports both times and their ratio, the operator's peak RSS (VmHWM), its API writes per
object (from the API server's audit log) and its writes during an idle resync window.
The operator side's clock starts when the operator's startup handler is done, so it includes kopf's
initial listing and indexing, during which no handler runs; --warm starts it once the operator is idle
(a running operator's convergence alone) and reports the wait as operator_warmup_s.

    .venv/bin/python bench/operator_scale.py --n 100 500 [--cluster-prefix NAME] [--warm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient

from batchline import api, manifests, model_cache
from batchline.build_key import repository_key
from batchline.config import OperatorConfig
from batchline.local.audit import write_events
from batchline.local.controlplane import LocalCluster
from batchline.local.identities import OPERATOR_USER
from batchline.local.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.crd_schema applies the CRD's own defaults
WORKERS = 16
LOG_DIR = Path(tempfile.gettempdir()) / "batchline-bench"  # kept after the cluster goes
SPEC = {
    "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"},
    "resources": {"gpu": {"count": 0}},
    # No Prometheus in this bench: autoscaling off, so each object reports ScalingActive=False once.
    "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "enabled": False},
}


def _namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))


def _serving_key() -> str:
    """The build key of every bench object (they share one model source, so one build)."""
    return repository_key(_defaulted_llmd("key", "default")["spec"])


def seed_catalogue(core: client.CoreV1Api, namespace: str, cfg: OperatorConfig) -> str:
    """Records the bench's one build in the namespace's cache catalogue, as a finished build Job would:
    the operator then serves it at once and starts no real build (this bench measures reconciling)."""
    key = _serving_key()
    entry = model_cache.CacheEntry(key, "2026-01-01T00:00:00Z", {"key": "bench", "sizeBytes": 1})
    catalogue = model_cache.catalogue(namespace, cfg)
    catalogue["data"] = {key: entry.to_data()}
    core.create_namespaced_config_map(namespace, catalogue)
    return key


def _defaulted_llmd(name: str, namespace: str) -> dict[str, Any]:
    from tests.crd_schema import llmd  # needs the repo root on sys.path (see above)

    obj = llmd(name=name, namespace=namespace, **json.loads(json.dumps(SPEC)))
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    return obj


def direct(kube: client.ApiClient, n: int, namespace: str, cfg: OperatorConfig) -> float:
    """The same children the operator makes (serving the same build), created by a plain client."""
    dyn = DynamicClient(kube)
    key = _serving_key()
    objs = [manifests.children(_defaulted_llmd(f"d{i}", namespace), 0, cfg, False, key) for i in range(n)]
    for kids in objs:  # the owner does not exist here; garbage collection must not reap the children mid-run
        for kid in kids:
            kid["metadata"].pop("ownerReferences")
            # Nor are they the operator's (started next): kopf still lists and watches them (its label filters
            # apply client-side), but without the label it indexes none of them and runs no handler for them.
            del kid["metadata"]["labels"][api.LABEL_LLMD]

    def create(kids: list[dict[str, Any]]) -> None:
        for kid in kids:
            dyn.resources.get(api_version=kid["apiVersion"], kind=kid["kind"]).create(body=kid, namespace=namespace)

    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(create, objs))
    return time.monotonic() - start


def settle(apps: client.AppsV1Api, namespace: str) -> float:
    """Wait until the controller-manager has observed every Deployment in `namespace`: its backlog from
    the direct side would otherwise slow the API server during the operator side's run."""
    start = time.monotonic()
    while True:
        listed = json.loads(apps.list_namespaced_deployment(namespace, _preload_content=False).data)["items"]
        if all(d.get("status", {}).get("observedGeneration") == d["metadata"]["generation"] for d in listed):
            return time.monotonic() - start
        time.sleep(0.5)


def _converged(custom: client.CustomObjectsApi, apps: client.AppsV1Api, namespace: str, n: int) -> bool:
    listed: dict[str, Any] = custom.list_namespaced_custom_object(  # type: ignore[assignment]
        api.GROUP, api.VERSION, namespace, api.PLURAL
    )
    items = listed["items"]
    current = sum(1 for o in items if (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"])
    if current < n:
        return False
    # Raw JSON: decoding N Deployments into client models every poll would take CPU from the operator's side.
    deployments = apps.list_namespaced_deployment(namespace, _preload_content=False)
    return len(json.loads(deployments.data)["items"]) == n


def via_operator(kube: client.ApiClient, n: int, namespace: str) -> float:
    custom, apps = client.CustomObjectsApi(kube), client.AppsV1Api(kube)

    def create(i: int) -> None:
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": f"o{i}"}, "spec": SPEC}
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, body)

    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(create, range(n)))
    while not _converged(custom, apps, namespace, n):
        time.sleep(0.5)
    return time.monotonic() - start


def _breakdown(events: list[dict[str, Any]]) -> dict[str, int]:
    def what(e: dict[str, Any]) -> str:
        ref = e["objectRef"]
        sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
        return f"{e['verb']} {ref.get('resource')}{sub}"

    return dict(Counter(what(e) for e in events))


def _phase(name: str) -> None:
    """Phase marks on stderr (wall clock), to line up with CPU samples or an operator profile."""
    print(f"phase {name} {time.time():.2f}", file=sys.stderr, flush=True)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout: float = 60.0) -> float:
    """Wait until the operator has taken in the cluster: kopf runs no handler until it has listed and
    indexed every watched object, which a burst of new objects arriving meanwhile keeps postponing.
    Idle: under 5% of a core in each of two consecutive half-second windows."""
    start = time.monotonic()
    quiet, last = 0, _cpu_seconds(pid)
    while quiet < 2 and time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = _cpu_seconds(pid)
        quiet = quiet + 1 if now - last < 0.025 else 0
        last = now
    return time.monotonic() - start


def measure(n: int, resync: float, cluster_prefix: str = "bench", warm: bool = False) -> dict[str, Any]:
    """One N on a fresh cluster, so nothing from another N is still being reconciled or collected."""
    cluster = LocalCluster(f"{cluster_prefix}-{n}")
    cluster.down()
    cluster.up()
    try:
        kube = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core = client.CoreV1Api(kube)
        crd = REPO / "crds" / "llmdeployment.yaml"
        subprocess.run(
            ["kubectl", f"--kubeconfig={cluster.kubeconfig}", "apply", "--server-side", "-f", str(crd)],
            check=True,
            capture_output=True,
        )
        _namespace(core, "direct")
        _namespace(core, "op")
        log = LOG_DIR / f"operator-{cluster_prefix}-{n}.log"
        log.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            # Both sides' pods mount the model cache the same way (a node folder, as in local mode).
            cfg = OperatorConfig(model_cache_host_path=tmp)
            _phase("direct")
            t_direct = direct(kube, n, "direct", cfg)
            _phase("settle")
            t_settle = settle(client.AppsV1Api(kube), "direct")
            seed_catalogue(core, "op", cfg)
            op = OperatorProcess(
                Path(cluster.operator_kubeconfig),
                log,
                env={"BATCHLINE_RESYNC_SECONDS": str(resync), "BATCHLINE_MODEL_CACHE_HOST_PATH": tmp},
            )
            op.start()
            op.wait_for_log("Activity 'startup' succeeded", timeout=120)
            assert op.pid is not None
            t_warm = wait_idle(op.pid) if warm else None
            since = time.time()
            _phase("operator")
            t_op = via_operator(kube, n, "op")
            _phase("converged")
            op_writes = write_events(cluster.state_dir, OPERATOR_USER, since)
            writes = len(op_writes)
            time.sleep(3)
            idle_since = time.time()
            time.sleep(2 * resync + 2)
            idle_events = write_events(cluster.state_dir, OPERATOR_USER, idle_since)
            rss = peak_rss_mb(op.pid)
            op.stop()
    finally:
        cluster.down()
    return {
        "n": n,
        "direct_s": round(t_direct, 2),
        "direct_settle_s": round(t_settle, 2),
        "operator_s": round(t_op, 2),
        "clock_starts": "operator idle" if warm else "operator startup handler done",
        **({"operator_warmup_s": round(t_warm, 2)} if t_warm is not None else {}),
        "ratio": round(t_op / t_direct, 2),
        "peak_rss_mb": round(rss, 1),
        "writes_per_object": round(writes / n, 2),
        "writes_breakdown": _breakdown(op_writes),
        "idle_resync_writes": len(idle_events),
        "idle_breakdown": _breakdown(idle_events),
    }


def run(ns: list[int], resync: float, cluster_prefix: str = "bench", warm: bool = False) -> list[dict[str, Any]]:
    results = []
    for n in ns:
        results.append(measure(n, resync, cluster_prefix, warm))
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--resync", type=float, default=OperatorConfig().resync_seconds)
    parser.add_argument(
        "--cluster-prefix", default="bench", help="local cluster names are PREFIX-N; keeps concurrent runs apart"
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="start the operator side's clock once the operator is idle after its start, not when its startup "
        "handler is done: measures a running operator's convergence without its initial listing",
    )
    args = parser.parse_args()
    rows = run(args.n, args.resync, args.cluster_prefix, args.warm)
    print("\n| N | direct create (s) | operator converge (s) | ratio | peak RSS (MB) | writes/object | idle writes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']} | {r['direct_s']} | {r['operator_s']} | {r['ratio']}x | {r['peak_rss_mb']} | "
            f"{r['writes_per_object']} | {r['idle_resync_writes']} |"
        )


if __name__ == "__main__":
    main()
