"""How fast the operator converges N LLMDeployments, against the API server's own limit.

One run, on one local control plane:
  1. direct: a plain client creates the same children (Service, PDB, Deployment) for N objects;
  2. operator: N LLMDeployments are applied at once and the operator converges them (children
     exist and status.observedGeneration is current). They all want one build, which is already in
     the namespace's cache catalogue, so no build runs and each gets its Deployment at once.
     Before it, the controller-manager catches up with the direct side's Deployments, so its
     backlog does not slow the API server on the operator side's clock. Convergence is observed
     with watches (a poll would list N objects a second, which costs the API server CPU itself).
  3. floor: with the operator stopped, a plain client makes the API calls any operator must make for N new
     objects (create each LLMDeployment, apply its children, write its status once): the API server's
     limit for the operator's job, so operator/floor is what the operator itself adds.
Reports the times and their ratios, the operator's peak RSS (VmHWM), its API writes per
object (from the API server's audit log) and its writes during an idle resync window.
The operator side's clock starts when the operator's startup handler is done, so it includes kopf's
initial listing and indexing, during which no handler runs; --warm starts it once the operator is idle
(a running operator's convergence alone) and reports the wait as operator_warmup_s.

    .venv/bin/python bench/operator_scale.py --n 100 500 [--cluster-prefix NAME] [--warm]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

from batchline import api
from batchline.build.catalogue import CacheEntry
from batchline.build.spec_key import repository_key
from batchline.config import OperatorConfig
from batchline.controller.kube_client import KubeClient
from batchline.controller.writer import with_hash
from batchline.resources import model_cache, serving
from devcluster.audit import write_events
from devcluster.controlplane import LocalCluster
from devcluster.identities import OPERATOR_USER
from devcluster.operator_process import OperatorProcess

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
    entry = CacheEntry(key, "2026-01-01T00:00:00Z", {"key": "bench", "sizeBytes": 1})
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
    key = _serving_key()
    plain = replace(cfg, pod_monitors=False)
    objs = [serving.children(_defaulted_llmd(f"d{i}", namespace), 0, plain, key) for i in range(n)]
    for kids in objs:  # the owner does not exist here; garbage collection must not reap the children mid-run
        for kid in kids:
            kid["metadata"].pop("ownerReferences")
            # Nor are they the operator's (started next): kopf still lists and watches them (its label filters
            # apply client-side), but without the label it indexes none of them and runs no handler for them.
            del kid["metadata"]["labels"][api.LABEL_LLMD]

    applier = KubeClient(kube)  # the operator's own API calls: no decoding of replies

    def create(kids: list[dict[str, Any]]) -> None:
        for kid in kids:
            applier.create(kid)

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


class Convergence:
    """Watches the namespace's LLMDeployments and Deployments, and tells when all N objects are converged:
    status.observedGeneration current and a Deployment each. A watch, not a poll: listing N objects every
    half second costs the API server about as much CPU as the operator's status writes (encoding them),
    and the direct side has no observer at all."""

    def __init__(self, kube: client.ApiClient, namespace: str, n: int) -> None:
        self._n = n
        self._current: set[str] = set()
        self._deployments: set[str] = set()
        self._done = threading.Event()
        self._lock = threading.Lock()
        custom, apps = client.CustomObjectsApi(kube), client.AppsV1Api(kube)
        llmds = functools.partial(custom.list_namespaced_custom_object, api.GROUP, api.VERSION, namespace, api.PLURAL)
        deployments = functools.partial(apps.list_namespaced_deployment, namespace)
        for lister, on_event in ((llmds, self._llmd), (deployments, self._deployment)):
            threading.Thread(target=self._watch, args=(lister, on_event), daemon=True).start()

    def _watch(self, lister: Callable[..., Any], on_event: Callable[[str, dict[str, Any]], None]) -> None:
        listed = json.loads(lister(_preload_content=False).data)  # raw JSON: no client models
        for item in listed["items"]:
            on_event("ADDED", item)
        version = listed["metadata"]["resourceVersion"]
        while not self._done.is_set():
            response = lister(watch=True, resource_version=version, timeout_seconds=60, _preload_content=False)
            for line in iter_resp_lines(response):
                event = json.loads(line)
                version = event["object"]["metadata"]["resourceVersion"]
                on_event(event["type"], event["object"])
                if self._done.is_set():
                    break
            response.release_conn()

    def _llmd(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        with self._lock:
            if kind != "DELETED" and (obj.get("status") or {}).get("observedGeneration") == meta["generation"]:
                self._current.add(meta["name"])
            else:
                self._current.discard(meta["name"])
            self._check()

    def _deployment(self, kind: str, obj: dict[str, Any]) -> None:
        with self._lock:
            (self._deployments.discard if kind == "DELETED" else self._deployments.add)(obj["metadata"]["name"])
            self._check()

    def _check(self) -> None:
        if len(self._current) >= self._n and len(self._deployments) >= self._n:
            self._done.set()

    def wait(self) -> None:
        self._done.wait()


def via_operator(kube: client.ApiClient, n: int, namespace: str) -> float:
    applier = KubeClient(kube)
    converged = Convergence(kube, namespace, n)

    def create(i: int) -> None:
        meta = {"name": f"o{i}", "namespace": namespace}
        applier.create({"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": meta, "spec": SPEC})

    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(create, range(n)))
    converged.wait()
    return time.monotonic() - start


def floor(kube: client.ApiClient, n: int, namespace: str, cfg: OperatorConfig, status: dict[str, Any]) -> float:
    """The API calls any operator must make for N new LLMDeployments, made by a plain client with nothing
    else running: create each one (as the user does), server-side apply its children (owned by it, hash
    stamped), and write its status once (the status the operator wrote on one of its own). No watch, no
    waiting for the controller-manager: the API server's limit for the operator's job."""
    custom, applier = client.CustomObjectsApi(kube), KubeClient(kube)
    key = _serving_key()

    def one(i: int) -> None:
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": f"f{i}"}, "spec": SPEC}
        created = json.loads(custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, body, _preload_content=False
        ).data)
        for kid in serving.children(created, 0, replace(cfg, pod_monitors=False), key):
            applier.apply(with_hash(kid))
        applier.merge_patch(api.API_VERSION, api.KIND, namespace, f"f{i}", {"status": status}, status=True)

    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, range(n)))
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
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 2 * WORKERS  # no connection (and TLS handshake) per request
        kube = client.ApiClient(configuration)
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
            written = client.CustomObjectsApi(kube).get_namespaced_custom_object(
                api.GROUP, api.VERSION, "op", api.PLURAL, "o0"
            )
            _namespace(core, "floor")
            _phase("floor")
            t_floor = floor(kube, n, "floor", cfg, written["status"])  # type: ignore[index]
            _phase("floor done")
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
        "floor_s": round(t_floor, 2),
        "floor_ratio": round(t_floor / t_direct, 2),
        "operator_over_floor": round(t_op / t_floor, 2),
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
    print("\n| N | direct create (s) | operator converge (s) | ratio | floor (s) | floor ratio | peak RSS (MB) "
          "| writes/object | idle writes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']} | {r['direct_s']} | {r['operator_s']} | {r['ratio']}x | {r['floor_s']} | {r['floor_ratio']}x "
            f"| {r['peak_rss_mb']} | {r['writes_per_object']} | {r['idle_resync_writes']} |"
        )


if __name__ == "__main__":
    main()
