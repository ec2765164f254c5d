"""A local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
KWOK with fake GPU nodes, process nodes whose agents (node_agent.py) run pods as local
processes, and (on request) the operator with the settings a local cluster needs (local_operator.py)
and the OpenAI-compatible gateway (local_gateway.py), all detached processes with their state in one
directory.

`batchline local up|down|status` and the pytest `cluster` fixture both drive LocalCluster.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from devcluster import binaries, local_gateway, local_operator, pki, pod_network, process
from devcluster import nodes as fake_nodes
from devcluster.components import (
    GROUPS,
    KUBERNETES_SERVICE_IP,
    LOCALHOST,
    PORTS,
    Component,
    components,
    process_node,
    process_node_names,
)
from devcluster.identities import ensure_kubeconfigs, node_identity, rbac_manifests
from devcluster.kubeapi import ApiError, KubeApi, probe
from devcluster.layout import Layout, default_root
from devcluster.nodes import DEFAULT_GPU_PRODUCT, RUNNER_LABEL, NodeSpec
from devcluster.pod_runner import kill_recorded_processes
from devcluster.pod_targets import PodDiscovery

OPERATOR = "operator"
GATEWAY = "gateway"


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

    def pod_discovery(self) -> PodDiscovery:
        """How a Prometheus discovers this cluster's pods (as the `prometheus` identity, which may read pods)."""
        p = self.layout.pki
        server = self._server(self._state()["ports"])
        return PodDiscovery(server, p / "ca.crt", p / "prometheus.crt", p / "prometheus.key")

    @property
    def operator_env_file(self) -> Path:
        """The settings an operator needs on this cluster (KEY=value lines), written by `up`."""
        return self.state_dir / "operator.env"

    def up(self, nodes: int = 2, gpus_per_node: int = 8, gpu_product: str = DEFAULT_GPU_PRODUCT,
           timeout: float = 180.0, process_nodes: int = 1, operator: bool | None = None,
           gateway: bool | None = None) -> Path:
        """Build what is missing, start what is not running, reconcile the GPU nodes and the process
        nodes (`process_nodes` agents that run pods as local processes); idempotent.

        `operator`: True runs the operator with this cluster's settings (as `ensure_operator()`),
        False stops it, None leaves it as it is (the tests run their own). `gateway` the same for the
        OpenAI-compatible gateway (as `ensure_gateway()`).
        Returns the admin kubeconfig path.
        """
        started = time.monotonic()
        binaries.ensure_binaries()
        deadline = time.monotonic() + timeout
        with self._locked():
            state = self._state() if self.layout.state_file.exists() else self._new_state()
            retired = process_node_names(state.get("nodes", {}).get("process_nodes", 0))[process_nodes:]
            state["nodes"] = {"count": nodes, "gpus_per_node": gpus_per_node, "gpu_product": gpu_product,
                              "process_nodes": process_nodes}
            agents = process_node_names(process_nodes)
            if agents:
                state["pod_range"] = pod_network.pod_range()
            missing = [name for name in agents if name not in state["ports"]]
            state["ports"] |= dict(zip(missing, process.free_ports(len(missing)), strict=True))
            self.layout.state_file.write_text(json.dumps(state, indent=2) + "\n")
            self._ensure_credentials(state["ports"], agents)
            comps = {c.name: c for c in self._components(state)}
            for group in [*GROUPS, agents]:
                for name in group:
                    self._ensure_running(comps[name])
                for name in group:
                    self._wait_healthy(comps[name], deadline)
                if "kube-apiserver" in group:
                    self._ensure_rbac()
            api = self.api()
            self._retire_process_nodes(api, retired)
            pool = fake_nodes.gpu_pool(nodes, gpus_per_node, gpu_product)
            fake_nodes.reconcile_pool(api, pool)
            fake_nodes.wait_ready(api, [n.name for n in pool] + agents, max(deadline - time.monotonic(), 1))
            _wait_for(lambda: _exists(api, "/api/v1/namespaces/default/serviceaccounts/default"), deadline,
                      "the default service account")
            self._write_operator_settings(api)
            if operator:
                self._ensure_operator({}, deadline)
            elif operator is False:
                self._stop_operator()
            if gateway:
                self._ensure_gateway(deadline)
            elif gateway is False:
                self._stop_gateway()
        _say(f"cluster {self.name!r} is up ({time.monotonic() - started:.1f}s)")
        return self.kubeconfig

    def ensure_operator(self, extra_env: Mapping[str, str] | None = None, timeout: float = 120.0) -> None:
        """Run the operator against this (running) cluster with the settings a local cluster needs
        (local_operator.settings: the model cache folder, builder sizes that fit the process nodes) plus
        `extra_env`; installs the CRD first. A running operator with other settings is restarted."""
        with self._locked():
            self._ensure_operator(extra_env or {}, time.monotonic() + timeout)

    def stop_operator(self) -> None:
        with self._locked():
            self._stop_operator()

    def ensure_gateway(self, timeout: float = 120.0) -> str:
        """Run `batchline gateway` against this (running) cluster: every namespace, model ids
        `namespace/name`, on 127.0.0.1 at a port kept in the cluster state; installs the CRD first.
        Returns its OpenAI base URL (`http://127.0.0.1:<port>/v1`)."""
        with self._locked():
            return self._ensure_gateway(time.monotonic() + timeout)

    def stop_gateway(self) -> None:
        with self._locked():
            self._stop_gateway()

    @property
    def openai_base_url(self) -> str | None:
        """The gateway's OpenAI base URL while this cluster runs one, else None."""
        if not self.layout.state_file.exists():
            return None
        state = self._state()
        return local_gateway.base_url(state["ports"][GATEWAY]) if state.get(GATEWAY) else None

    def down(self) -> None:
        """Stop every component and remove the state dir (etcd data, certificates, logs)."""
        if not self.state_dir.exists():
            return
        with self._locked():
            if self.layout.state_file.exists():
                self._stop_gateway()  # first, while the API server they talk to still answers
                self._stop_operator()
                process.stop_all(pid for _, pid in self._pids())
            kill_recorded_processes(self.state_dir / "nodes")  # pods of an agent that did not stop them
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
        for comp in self._components(state):
            result["components"][comp.name] = {
                "pid": pids.get(comp.name), "running": comp.name in pids,
                "healthy": comp.name in pids and probe(comp.health_url),
                "port": state["ports"].get(comp.name), "log": str(self.layout.log(comp.name)),
            }
        result["up"] = all(c["healthy"] for c in result["components"].values())
        result |= {"server": self._server(state["ports"]), "kubeconfig": str(self.kubeconfig),
                   "openai_base_url": self.openai_base_url,
                   "operator_kubeconfig": str(self.operator_kubeconfig), "audit_log": str(self.audit_log),
                   "kube_version": state["kube_version"], "requested_nodes": state.get("nodes"),
                   "pod_range": state.get("pod_range")}
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
        # pod_block: the first /24 of the pod range for this cluster's process nodes; random, so that
        # clusters side by side rarely hand out the same pod IPs.
        return {"name": self.name, "kube_version": binaries.KUBE_VERSION,
                "ports": dict(zip(PORTS, process.free_ports(len(PORTS)), strict=True)),
                "pod_block": random.randrange(256)}

    @staticmethod
    def _server(ports: Mapping[str, int]) -> str:
        return f"https://{LOCALHOST}:{ports['kube-apiserver']}"

    def _components(self, state: Mapping[str, Any]) -> list[Component]:
        ports = state["ports"]
        agents = process_node_names(state.get("nodes", {}).get("process_nodes", 0))
        pod_range, block = state.get("pod_range", pod_network.LOOPBACK_RANGE), state.get("pod_block", 0)
        operator = [self._operator_component(state)] if state.get(OPERATOR) else []
        gateway = [self._gateway_component(state)] if state.get(GATEWAY) else []
        return [*components(self.layout, ports, binaries.bin_dir(), binaries.kwok_stages_file()),
                *(process_node(self.layout, name, pod_network.node_subnet(pod_range, block + i), ports[name])
                  for i, name in enumerate(agents)), *operator, *gateway]

    def _gateway_component(self, state: Mapping[str, Any]) -> Component:
        port = state["ports"][GATEWAY]
        return Component(GATEWAY, local_gateway.argv(self.layout.kubeconfig(GATEWAY), port),
                         local_gateway.health_url(port))

    def _ensure_gateway(self, deadline: float) -> str:
        if not self.layout.kubeconfig(GATEWAY).exists():
            raise RuntimeError(f"no gateway identity in {self.state_dir}: run `batchline local up` (this version)")
        self._ensure_crd(self.api(), deadline)
        state = self._state()
        if not state.get(GATEWAY):
            if GATEWAY not in state["ports"]:  # kept once chosen: the URL stays the same across restarts
                state["ports"][GATEWAY] = process.free_ports(1)[0]
            state[GATEWAY] = {"hold_timeout_s": local_gateway.HOLD_TIMEOUT_S}
            self.layout.state_file.write_text(json.dumps(state, indent=2) + "\n")
        comp = self._gateway_component(state)
        self._ensure_running(comp)
        self._wait_healthy(comp, deadline)
        return local_gateway.base_url(state["ports"][GATEWAY])

    def _stop_gateway(self) -> None:
        """Stop the gateway, if this cluster runs one."""
        state = self._state()
        if not state.get(GATEWAY):
            return
        pid = self._running_pid(self._gateway_component(state))
        if pid is not None:
            _say("stopping the gateway")
            process.stop_all([pid])
        del state[GATEWAY]
        self.layout.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def _operator_component(self, state: Mapping[str, Any]) -> Component:
        port = state["ports"][OPERATOR]
        return Component(OPERATOR, local_operator.argv(self.operator_kubeconfig, port),
                         f"http://{LOCALHOST}:{port}/healthz", env=state[OPERATOR]["env"])

    def _ensure_operator(self, extra_env: Mapping[str, str], deadline: float) -> None:
        api = self.api()
        self._ensure_crd(api, deadline)
        env = self._write_operator_settings(api) | dict(extra_env)
        state = self._state()
        if state.get(OPERATOR, {}).get("env") != env:
            self._stop_operator()
            state = self._state()
            if OPERATOR not in state["ports"]:
                state["ports"][OPERATOR] = process.free_ports(1)[0]
            state[OPERATOR] = {"env": env}
            self.layout.state_file.write_text(json.dumps(state, indent=2) + "\n")
        local_operator.model_cache().mkdir(parents=True, exist_ok=True)
        comp = self._operator_component(state)
        self._ensure_running(comp)
        self._wait_healthy(comp, deadline)

    def _write_operator_settings(self, api: KubeApi) -> dict[str, str]:
        process_nodes = api.get(f"/api/v1/nodes?labelSelector={RUNNER_LABEL}%3Dprocess")["items"]
        settings = local_operator.settings(process_nodes)
        self.operator_env_file.write_text(local_operator.env_file_text(settings))
        return settings

    def _stop_operator(self) -> None:
        """Stop the operator, if this cluster runs one."""
        state = self._state()
        if not state.get(OPERATOR):
            return
        pid = self._running_pid(self._operator_component(state))
        if pid is not None:
            _say("stopping the operator")
            process.stop_all([pid])
        del state[OPERATOR]
        self.layout.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def _ensure_crd(self, api: KubeApi, deadline: float) -> None:
        """The LLMDeployment CRD from this checkout (server-side apply), until it is Established."""
        crd = yaml.safe_load(local_operator.CRD.read_text())
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
        api.request("PATCH", f"{path}?fieldManager=batchline-local&force=true", crd, "application/apply-patch+yaml")

        def established() -> bool:
            conditions = api.get(path).get("status", {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        _wait_for(established, deadline, "the LLMDeployment CRD to be established")

    def _pids(self) -> Iterator[tuple[str, int]]:
        for comp in self._components(self._state()):
            pid = self._running_pid(comp)
            if pid is not None:
                yield comp.name, pid

    def _ensure_credentials(self, ports: Mapping[str, int], process_nodes: list[str]) -> None:
        p = self.layout.pki
        pki.ensure_ca(p)
        pki.ensure_serving_cert(p, "apiserver", ["localhost", "kubernetes", "kubernetes.default",
                                                 "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
                                [LOCALHOST, KUBERNETES_SERVICE_IP])
        pki.ensure_service_account_keys(p)
        ensure_kubeconfigs(self.layout, f"batchline-{self.name}", self._server(ports),
                           {name: node_identity(name) for name in process_nodes})

    def _ensure_rbac(self) -> None:
        """What the process nodes and Prometheus may do (server-side apply, so changes here roll out)."""
        api = self.api()
        for manifest in rbac_manifests():
            kind = manifest["kind"].lower() + "s"
            path = f"/apis/rbac.authorization.k8s.io/v1/{kind}/{manifest['metadata']['name']}"
            api.request("PATCH", f"{path}?fieldManager=batchline-local&force=true", manifest,
                        "application/apply-patch+yaml")

    def _retire_process_nodes(self, api: KubeApi, names: list[str]) -> None:
        """Stop the agents of process nodes beyond the requested count and delete their Nodes."""
        for name in names:
            pid = process.running_pid(self.layout.pid_file(name), f"{self.state_dir}/")
            if pid is not None:
                _say(f"stopping {name}")
                process.stop_all([pid])
            kill_recorded_processes(self.layout.node_dir(name))
            fake_nodes.delete(api, name)

    def _running_pid(self, comp: Component) -> int | None:
        # Every component's command line names a path in the state dir.
        return process.running_pid(self.layout.pid_file(comp.name), f"{self.state_dir}/")

    def _ensure_running(self, comp: Component) -> None:
        pid_file = self.layout.pid_file(comp.name)
        if self._running_pid(comp) is None:
            _say(f"starting {comp.name}")
            # In the state dir: `python -m` puts the working dir first on sys.path, and a source
            # checkout there would shadow the installed packages.
            process.start(comp.argv, self.layout.log(comp.name), pid_file, cwd=self.state_dir, env=comp.env)

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
