"""A local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and KWOK with fake GPU nodes, run as detached processes with their state in one directory.

`batchline local up|down|status` and the pytest `cluster` fixture both drive LocalCluster.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from batchline.local import binaries, pki, process
from batchline.local import nodes as fake_nodes
from batchline.local.components import (
    GROUPS,
    KUBERNETES_SERVICE_IP,
    LOCALHOST,
    PORTS,
    Component,
    components,
)
from batchline.local.identities import ensure_kubeconfigs
from batchline.local.kubeapi import ApiError, KubeApi, probe
from batchline.local.layout import Layout, default_root
from batchline.local.nodes import DEFAULT_GPU_PRODUCT, NodeSpec


def _say(message: str) -> None:
    print(f"[local] {message}", file=sys.stderr, flush=True)


class LocalCluster:
    """One local cluster, identified by its state dir (default: <BATCHLINE_LOCAL_DIR>/<name>)."""

    def __init__(self, name: str = "default", state_dir: str | Path | None = None) -> None:
        self.name = name
        self.layout = Layout((Path(state_dir) if state_dir else default_root() / name).absolute())

    @property
    def state_dir(self) -> Path:
        return self.layout.root

    @property
    def kubeconfig(self) -> Path:
        """Admin (system:masters) kubeconfig."""
        return self.layout.kubeconfig("admin")

    @property
    def operator_kubeconfig(self) -> Path:
        """Kubeconfig of the `batchline-operator` user (system:masters too), for attributing writes."""
        return self.layout.kubeconfig("operator")

    @property
    def audit_log(self) -> Path:
        return self.layout.audit_log

    def api(self, identity: str = "admin") -> KubeApi:
        """A client authenticated as `identity` (a key of identities.IDENTITIES, e.g. "operator")."""
        p = self.layout.pki
        return KubeApi(self._server(self._state()["ports"]), p / "ca.crt", p / f"{identity}.crt",
                       p / f"{identity}.key")

    def up(self, nodes: int = 2, gpus_per_node: int = 8, gpu_product: str = DEFAULT_GPU_PRODUCT,
           timeout: float = 180.0) -> Path:
        """Build what is missing, start what is not running, reconcile the GPU nodes; idempotent.

        Returns the admin kubeconfig path.
        """
        started = time.monotonic()
        binaries.ensure_binaries()
        deadline = time.monotonic() + timeout
        with self._locked():
            state = self._state() if self.layout.state_file.exists() else self._new_state()
            state["nodes"] = {"count": nodes, "gpus_per_node": gpus_per_node, "gpu_product": gpu_product}
            self.layout.state_file.write_text(json.dumps(state, indent=2) + "\n")
            self._ensure_credentials(state["ports"])
            comps = {c.name: c for c in self._components(state["ports"])}
            for group in GROUPS:
                for name in group:
                    self._ensure_running(comps[name])
                for name in group:
                    self._wait_healthy(comps[name], deadline)
            api = self.api()
            pool = fake_nodes.gpu_pool(nodes, gpus_per_node, gpu_product)
            fake_nodes.reconcile_pool(api, pool)
            fake_nodes.wait_ready(api, [n.name for n in pool], max(deadline - time.monotonic(), 1))
            _wait_for(lambda: _exists(api, "/api/v1/namespaces/default/serviceaccounts/default"), deadline,
                      "the default service account")
        _say(f"cluster {self.name!r} is up ({time.monotonic() - started:.1f}s)")
        return self.kubeconfig

    def down(self) -> None:
        """Stop every component and remove the state dir (etcd data, certificates, logs)."""
        if not self.state_dir.exists():
            return
        with self._locked():
            if self.layout.state_file.exists():
                process.stop_all(pid for _, pid in self._pids())
            shutil.rmtree(self.state_dir)

    def is_up(self) -> bool:
        return bool(self.status()["up"])

    def status(self) -> dict[str, Any]:
        """Components (pid, running, healthy), nodes and GPU allocatable; cheap, safe to poll."""
        result: dict[str, Any] = {"name": self.name, "state_dir": str(self.state_dir), "up": False,
                                  "components": {}, "nodes": [], "gpu_allocatable": 0}
        if not self.layout.state_file.exists():
            return result
        state = self._state()
        pids = dict(self._pids())
        for comp in self._components(state["ports"]):
            result["components"][comp.name] = {
                "pid": pids.get(comp.name), "running": comp.name in pids,
                "healthy": comp.name in pids and probe(comp.health_url),
                "port": state["ports"].get(comp.name), "log": str(self.layout.log(comp.name)),
            }
        result["up"] = all(c["healthy"] for c in result["components"].values())
        result |= {"server": self._server(state["ports"]), "kubeconfig": str(self.kubeconfig),
                   "operator_kubeconfig": str(self.operator_kubeconfig), "audit_log": str(self.audit_log),
                   "kube_version": state["kube_version"], "requested_nodes": state.get("nodes")}
        if result["components"]["kube-apiserver"]["healthy"]:
            result["nodes"] = [fake_nodes.summary(n) for n in self.api().get("/api/v1/nodes")["items"]]
            result["gpu_allocatable"] = sum(n["gpus"] for n in result["nodes"])
        return result

    def add_node(self, spec: NodeSpec, timeout: float = 60.0) -> None:
        """Add a fake node (e.g. `NodeSpec("cpu-0", gpus=0)`) and wait until pods can land on it."""
        api = self.api()
        fake_nodes.create(api, spec)
        fake_nodes.wait_ready(api, [spec.name], timeout)

    def remove_node(self, name: str) -> None:
        fake_nodes.delete(self.api(), name)

    def _state(self) -> dict[str, Any]:
        return dict(json.loads(self.layout.state_file.read_text()))

    def _new_state(self) -> dict[str, Any]:
        return {"name": self.name, "kube_version": binaries.KUBE_VERSION,
                "ports": dict(zip(PORTS, process.free_ports(len(PORTS)), strict=True))}

    @staticmethod
    def _server(ports: Mapping[str, int]) -> str:
        return f"https://{LOCALHOST}:{ports['kube-apiserver']}"

    def _components(self, ports: Mapping[str, int]) -> list[Component]:
        return components(self.layout, ports, binaries.bin_dir(), binaries.kwok_stages_file())

    def _pids(self) -> Iterator[tuple[str, int]]:
        for comp in self._components(self._state()["ports"]):
            pid = self._running_pid(comp)
            if pid is not None:
                yield comp.name, pid

    def _ensure_credentials(self, ports: Mapping[str, int]) -> None:
        p = self.layout.pki
        pki.ensure_ca(p)
        pki.ensure_serving_cert(p, "apiserver", ["localhost", "kubernetes", "kubernetes.default",
                                                 "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
                                [LOCALHOST, KUBERNETES_SERVICE_IP])
        pki.ensure_service_account_keys(p)
        ensure_kubeconfigs(self.layout, f"batchline-{self.name}", self._server(ports))

    def _running_pid(self, comp: Component) -> int | None:
        # Every component's command line names a path in the state dir.
        return process.running_pid(self.layout.pid_file(comp.name), f"{self.state_dir}/")

    def _ensure_running(self, comp: Component) -> None:
        pid_file = self.layout.pid_file(comp.name)
        if self._running_pid(comp) is None:
            _say(f"starting {comp.name}")
            process.start(comp.argv, self.layout.log(comp.name), pid_file)

    def _wait_healthy(self, comp: Component, deadline: float) -> None:
        def healthy() -> bool:
            if self._running_pid(comp) is None:
                tail = self.layout.log(comp.name).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{comp.name} exited; end of {self.layout.log(comp.name)}:\n{tail}")
            return probe(comp.health_url)

        _wait_for(healthy, deadline, f"{comp.name} to be healthy ({comp.health_url})")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down on one state dir (e.g. two test sessions starting together)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.layout.lock_file.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield



def _exists(api: KubeApi, path: str) -> bool:
    try:
        api.get(path)
    except ApiError as err:
        if err.status == 404:
            return False
        raise
    return True


def _wait_for(check: Callable[[], bool], deadline: float, what: str) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)
