"""The process node agent: a stand-in kubelet that runs the pods bound to its Node as local processes.

    python -m devcluster.node_agent --kubeconfig K --node NAME --work-dir D [--cpu N --memory Q]

It registers its Node (no GPUs, no taints, no KWOK annotation), keeps it Ready with a Lease renewed
every 10 s and the Ready condition refreshed every minute, and watches the pods bound to it. Each pod
gets its own loopback address from --pod-subnet (all of 127/8 reaches the loopback interface), so
pods serve on the same ports side by side, and a PodRunner (pod_runner.py) that runs its containers.
Container logs are files under the work dir, pods/<namespace>_<name>_<uid>/<container>/<restarts>.log:
`kubectl logs` has no kubelet to ask. SIGTERM stops every pod's processes; a restarted agent starts
the pods it finds bound to its node again (restartPolicy Always) or fails them (Never).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import ipaddress
import logging
import os
import platform
import signal
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devcluster.container_launch import PodContext
from devcluster.kubeapi import ApiError, KubeApi
from devcluster.pod_runner import TERMINAL, PodRunner, delete_pod, kill_recorded_processes
from devcluster.pod_status import timestamp
from model_repo_builder.triton_server import prepare_backends

log = logging.getLogger("batchline.node_agent")

DEFAULT_NODE = "process-node-0"
DEFAULT_POD_SUBNET = "127.77.0.0/24"
HOST_IP = "127.0.0.1"
NODE_LABELS = {"batchline.dev/local-node": "process", "batchline.dev/node-runner": "process"}
MAX_PODS = 32
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40
LEASE_RENEW_S = 10.0
NODE_STATUS_EVERY_S = 60.0
WATCH_TIMEOUT_S = 240
RETRY_S = 2.0


def host_memory() -> str:
    """MemTotal as a Kubernetes quantity."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{line.split()[1]}Ki"
    raise RuntimeError("no MemTotal in /proc/meminfo")


class PodAddresses:
    """The pod IPs of one node: the addresses of its subnet after .1, handed out round robin so that a
    freed address is not reused at once."""

    def __init__(self, subnet: str) -> None:
        self._free = [str(ip) for ip in ipaddress.ip_network(subnet).hosts()][1:]
        self._lock = threading.Lock()

    def take(self, wanted: str | None = None) -> str | None:
        """`wanted` if it is free (a pod that had it before the agent restarted), else the next free one."""
        with self._lock:
            if wanted in self._free:
                self._free.remove(wanted)
                return wanted
            return self._free.pop(0) if self._free else None

    def give_back(self, ip: str) -> None:
        with self._lock:
            self._free.append(ip)


class NodeAgent:
    def __init__(self, api: KubeApi, node: str, work_dir: Path, cpu: str, memory: str, pod_subnet: str) -> None:
        self.api = api
        self.node = node
        self.work_dir = work_dir
        self.resources = {"cpu": cpu, "memory": memory, "pods": str(MAX_PODS)}
        self.addresses = PodAddresses(pod_subnet)
        self.stop = threading.Event()
        self.last_lease_renewal = 0.0
        self._registered_at = time.time()
        self._runners: dict[str, PodRunner] = {}
        self._done: set[str] = set()  # uids whose runner ended: late events must not start them again
        self._deleted: set[str] = set()  # uids of finished pods this agent already deleted
        self._lock = threading.Lock()
        self._backends: Path | None = None
        self._backends_lock = threading.Lock()

    def run(self) -> None:
        """Register, then heartbeat and run pods until `stop` is set; then stop every pod's processes."""
        while not self.stop.is_set():
            try:
                node_uid = self.register()
                break
            except (ApiError, OSError) as err:
                log.warning("registering node %s failed, retrying: %s", self.node, err)
                self.stop.wait(RETRY_S)
        else:
            return
        threading.Thread(target=self._heartbeat, args=(node_uid,), name="heartbeat", daemon=True).start()
        threading.Thread(target=self._watch_pods, name="pod-watch", daemon=True).start()
        self.stop.wait()
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.shutdown()
        for runner in runners:
            runner.join()
        log.info("stopped the processes of %d pods", len(runners))

    # The Node and its Lease.
    def register(self) -> str:
        """Create the Node (or update an existing one's labels); returns its uid."""
        labels = {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        labels |= NODE_LABELS
        try:
            self.api.request("POST", "/api/v1/nodes", {"metadata": {"name": self.node, "labels": labels}})
        except ApiError as err:
            if err.status != 409:
                raise
            patch = {"metadata": {"labels": labels}}
            self.api.request("PATCH", f"/api/v1/nodes/{self.node}", patch, "application/merge-patch+json")
        self._post_node_status()
        log.info("registered node %s (%s)", self.node, self.resources)
        return str(self.api.get(f"/api/v1/nodes/{self.node}")["metadata"]["uid"])

    def _post_node_status(self) -> None:
        now, since = timestamp(time.time()), timestamp(self._registered_at)

        def condition(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
            times = {"lastHeartbeatTime": now, "lastTransitionTime": since}
            return {"type": ctype, "status": status, "reason": reason, "message": message, **times}

        status = {
            "capacity": self.resources,
            "allocatable": self.resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "not checked"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "not checked"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "not checked"),
                condition("Ready", "True", "KubeletReady", "the batchline process node agent is running pods"),
            ],
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "kernelVersion": platform.release(),
                "osImage": "batchline process node",
                "containerRuntimeVersion": "process://local",
                "kubeletVersion": "batchline-node-agent",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        path = f"/api/v1/nodes/{self.node}/status"
        self.api.request("PATCH", path, {"status": status}, "application/merge-patch+json")

    def _renew_lease(self, node_uid: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        renew = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": renew}
        try:
            self.api.request("PATCH", f"{path}/{self.node}", {"spec": spec}, "application/merge-patch+json")
        except ApiError as err:
            if err.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": node_uid}
            self.api.request("POST", path, {"metadata": {"name": self.node, "ownerReferences": [owner]}, "spec": spec})
        self.last_lease_renewal = time.monotonic()

    def _heartbeat(self, node_uid: str) -> None:
        status_due = time.monotonic() + NODE_STATUS_EVERY_S
        while not self.stop.is_set():
            try:
                self._renew_lease(node_uid)
                if time.monotonic() >= status_due:
                    self._post_node_status()
                    status_due = time.monotonic() + NODE_STATUS_EVERY_S
            except ApiError as err:
                log.warning("heartbeat failed: %s", err)
                if err.status == 404:  # the Node was deleted: register it again
                    with contextlib.suppress(ApiError, OSError):
                        node_uid = self.register()
            except OSError as err:
                log.warning("heartbeat failed: %s", err)
            self.stop.wait(LEASE_RENEW_S)

    # Pods.
    def _watch_pods(self) -> None:
        """List, then watch from the list's resourceVersion; list again when the watch expires (410)."""
        selector = "fieldSelector=" + urllib.parse.quote(f"spec.nodeName={self.node}")
        while not self.stop.is_set():
            try:
                listing = self.api.get(f"/api/v1/pods?{selector}")
                self._sync(listing["items"])
                version = listing["metadata"]["resourceVersion"]
                while version and not self.stop.is_set():
                    query = f"{selector}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_S}"
                    version = self._follow(f"/api/v1/pods?{query}&resourceVersion={version}", version)
            except Exception as err:  # whatever it was, the watch must go on
                log.warning("pod watch failed, listing again: %r", err)
                self.stop.wait(RETRY_S)

    def _follow(self, path: str, version: str) -> str:
        """Apply one watch's events; returns the resourceVersion to go on from, or "" to list again."""
        for event in self.api.watch(path, timeout=WATCH_TIMEOUT_S + 30):
            obj = event["object"]
            if event["type"] == "ERROR":
                log.info("pod watch ended: %s", obj.get("message"))
                return ""
            version = obj["metadata"]["resourceVersion"]
            if event["type"] != "BOOKMARK":
                self._handle(event["type"], obj)
        return version

    def _sync(self, pods: list[dict[str, Any]]) -> None:
        uids = {pod["metadata"]["uid"] for pod in pods}
        with self._lock:
            gone = [runner for uid, runner in self._runners.items() if uid not in uids]
        for runner in gone:
            runner.removed()
        for pod in pods:
            self._handle("MODIFIED", pod)

    def _handle(self, kind: str, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            runner = self._runners.get(uid)
        if kind == "DELETED":
            if runner is not None:
                runner.removed()
            with self._lock:
                self._done.discard(uid)
            self._deleted.discard(uid)
            return
        if runner is not None:
            runner.update(pod)
            return
        with self._lock:
            done = uid in self._done
        if meta.get("deletionTimestamp"):
            self._delete_finished(pod)
        elif not done and (pod.get("status") or {}).get("phase") not in TERMINAL:
            self._start(pod)

    def _delete_finished(self, pod: Mapping[str, Any]) -> None:
        """A pod being deleted that runs nothing here (finished, or left by an agent that died)."""
        meta = pod["metadata"]
        if meta["uid"] in self._deleted:
            return
        kill_recorded_processes(self._pod_dir(pod))
        delete_pod(self.api, f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", meta["uid"])
        self._deleted.add(meta["uid"])

    def _start(self, pod: Mapping[str, Any]) -> None:
        ip = self.addresses.take((pod.get("status") or {}).get("podIP"))
        if ip is None:
            log.warning("no free pod IP for %s/%s", pod["metadata"]["namespace"], pod["metadata"]["name"])
            return
        ctx = PodContext(
            pod_ip=ip,
            host_ip=HOST_IP,
            node_name=self.node,
            pod_dir=self._pod_dir(pod),
            host_env=dict(os.environ),
            triton_backend_dir=self._triton_backends,
            read_secret=self._read_secret,
        )
        runner = PodRunner(self.api, self._with_claims_resolved(pod), ctx, self._runner_done)
        with self._lock:  # `run` takes this lock after `stop` is set to collect the runners to stop
            if self.stop.is_set():
                self.addresses.give_back(ip)
                return
            self._runners[runner.uid] = runner
            runner.start()

    def _with_claims_resolved(self, pod: Mapping[str, Any]) -> dict[str, Any]:
        """The pod with each bound claim whose volume is a node folder (hostPath or local PV) mounted as
        that folder, as a kubelet would; other claims stay and fail the pod with a clear message."""
        volumes = []
        for volume in pod["spec"].get("volumes") or []:
            claim = volume.get("persistentVolumeClaim")
            path = self._claim_path(pod["metadata"]["namespace"], claim["claimName"]) if claim else None
            volumes.append({"name": volume["name"], "hostPath": {"path": path}} if path else volume)
        return {**pod, "spec": {**pod["spec"], "volumes": volumes}}

    def _claim_path(self, namespace: str, claim: str) -> str | None:
        try:
            pvc = self.api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
            if not pvc["spec"].get("volumeName"):
                return None
            pv = self.api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
        except ApiError:
            return None
        source = pv["spec"].get("hostPath") or pv["spec"].get("local") or {}
        return str(source["path"]) if source.get("path") else None

    def _read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def _runner_done(self, runner: PodRunner) -> None:
        with self._lock:
            self._runners.pop(runner.uid, None)
            self._done.add(runner.uid)
        self.addresses.give_back(runner.ctx.pod_ip)

    def _pod_dir(self, pod: Mapping[str, Any]) -> Path:
        meta = pod["metadata"]
        return self.work_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"

    def _triton_backends(self) -> Path:
        """The backend directory for tritonserver (the wheel's python backend and this Python's stub), made once."""
        with self._backends_lock:
            if self._backends is None:
                self._backends = prepare_backends(self.work_dir / "triton-backends")
            return self._backends


class _Healthz(http.server.BaseHTTPRequestHandler):
    agent: NodeAgent

    def do_GET(self) -> None:
        fresh = time.monotonic() - self.agent.last_lease_renewal < LEASE_DURATION_S
        self.send_response(200 if self.path == "/healthz" and fresh else 503)
        self.end_headers()
        self.wfile.write(b"ok\n" if fresh else b"lease not renewed\n")

    def log_message(self, *_: Any) -> None:
        pass


def serve_healthz(agent: NodeAgent, port: int) -> None:
    """GET /healthz on 127.0.0.1:`port`: 200 while the node's Lease is being renewed."""
    handler = type("Healthz", (_Healthz,), {"agent": agent})
    server = http.server.ThreadingHTTPServer((HOST_IP, port), handler)
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devcluster.node_agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", default=DEFAULT_NODE, help=f"Node name (default: {DEFAULT_NODE})")
    parser.add_argument("--work-dir", type=Path, required=True, help="pod folders, logs, credentials")
    parser.add_argument("--cpu", default=str(os.cpu_count() or 1), help="cpu capacity (default: host cores)")
    parser.add_argument("--memory", default=None, help="memory capacity (default: host memory)")
    parser.add_argument("--pod-subnet", default=DEFAULT_POD_SUBNET, help="loopback /24 the pod IPs come from")
    parser.add_argument("--healthz-port", type=int, default=0, help="serve /healthz on 127.0.0.1 (0: off)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    work_dir = args.work_dir.absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    api = KubeApi.from_kubeconfig(args.kubeconfig, work_dir / "credentials")
    agent = NodeAgent(api, args.node, work_dir, args.cpu, args.memory or host_memory(), args.pod_subnet)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop.set())
    if args.healthz_port:
        serve_healthz(agent, args.healthz_port)
    agent.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
