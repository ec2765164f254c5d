"""Where the models are: a static table (`--upstream`), or LLMDeployments and their EndpointSlices.

`models_from()` turns LLMDeployments and EndpointSlices into the routing table and is pure, so it
is unit-tested without a cluster. `KubernetesDiscovery` feeds it from two watches (LLMDeployments,
and EndpointSlices carrying the `batchline.dev/llmdeployment` label that Batchline's Services pass
on to their slices), each in a thread of the synchronous `kubernetes` client: the asyncio client is
not a dependency of Batchline, and kopf is an operator framework (handlers, peering that pauses all
but one replica), while the gateway is a read-only client that runs several active replicas.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from batchline import api
from batchline.gateway.routing import EMBEDDINGS, TEXT_GENERATION, Endpoint, Model

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
GRPC_PORT_NAME = "grpc"


def model_id(namespace: str, name: str, qualified: bool) -> str:
    return f"{namespace}/{name}" if qualified else name


def _created(meta: Mapping[str, Any]) -> int:
    stamp = meta.get("creationTimestamp")
    if isinstance(stamp, datetime):
        return int(stamp.timestamp())
    if isinstance(stamp, str):
        try:
            return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return 0
    return 0


def servable(llmd: Mapping[str, Any]) -> bool:
    """Whether an LLMDeployment has a build to serve (so a Deployment, maybe at zero replicas)."""
    build = (llmd.get("status") or {}).get("build") or {}
    return bool(build.get("servingKey")) or build.get("phase") == "Ready"


def endpoints_from(slices: Iterable[Mapping[str, Any]]) -> tuple[Endpoint, ...]:
    """The gRPC endpoints of a Service's EndpointSlices, with their readiness and termination."""
    out: dict[str, Endpoint] = {}
    for slice_ in slices:
        port = next((p.get("port") for p in slice_.get("ports") or [] if p.get("name") == GRPC_PORT_NAME), None)
        if port is None:
            continue
        for endpoint in slice_.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            ready = conditions.get("ready")
            terminating = bool(conditions.get("terminating"))
            pod = ((endpoint.get("targetRef") or {}).get("name")) or ""
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                key = f"{host}:{port}"
                # A missing `ready` means ready (the API's documented default), unless terminating.
                out[key] = Endpoint(key, ready=(ready is not False) and not terminating,
                                    terminating=terminating, pod=pod)
    return tuple(sorted(out.values(), key=lambda e: e.address))


def _info(llmd: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    spec = llmd.get("spec") or {}
    status = llmd.get("status") or {}
    info: dict[str, Any] = {
        "namespace": namespace,
        "task": (spec.get("model") or {}).get("task", TEXT_GENERATION),
        "source": (spec.get("model") or {}).get("source"),
        "quantization": (spec.get("quantization") or {}).get("mode"),
        "build": dict(((status.get("build") or {}).get("report")) or {}),
    }
    if "readyReplicas" in status:
        info["ready_replicas"] = status["readyReplicas"]
    return info


def models_from(
    llmds: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]], *, qualified: bool
) -> dict[str, Model]:
    """The routing table: one model per servable LLMDeployment, with its Service's endpoints."""
    by_service: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for slice_ in slices:
        meta = slice_.get("metadata") or {}
        labels = meta.get("labels") or {}
        name = labels.get(api.LABEL_LLMD) or labels.get(SERVICE_NAME_LABEL)
        if name:
            by_service.setdefault((meta.get("namespace", ""), name), []).append(slice_)
    out: dict[str, Model] = {}
    for llmd in llmds:
        if not servable(llmd):
            continue
        meta = llmd["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        spec = llmd.get("spec") or {}
        key = model_id(namespace, name, qualified)
        out[key] = Model(
            id=key,
            triton_model=(spec.get("serving") or {}).get("modelName") or "model",
            task=(spec.get("model") or {}).get("task") or TEXT_GENERATION,
            endpoints=endpoints_from(by_service.get((namespace, name), [])),
            created=_created(meta),
            info=_info(llmd, namespace),
            namespace=namespace,
            name=name,
        )
    return out


def parse_upstream(text: str) -> Model:
    """`NAME=HOST:PORT[,HOST:PORT...][?task=embeddings&triton_model=NAME]`: one static model."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--upstream {text!r}: expected NAME=HOST:PORT[,HOST:PORT...][?task=...&triton_model=...]")
    addresses, _, query = rest.partition("?")
    options = {key: values[-1] for key, values in parse_qs(query, strict_parsing=bool(query)).items()}
    unknown = set(options) - {"task", "triton_model"}
    if unknown:
        raise ValueError(f"--upstream {text!r}: unknown option(s) {', '.join(sorted(unknown))}")
    task = options.get("task", TEXT_GENERATION)
    if task not in (TEXT_GENERATION, EMBEDDINGS):
        raise ValueError(f"--upstream {text!r}: task must be {TEXT_GENERATION} or {EMBEDDINGS}")
    endpoints = []
    for address in filter(None, addresses.split(",")):
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"--upstream {text!r}: {address!r} is not HOST:PORT")
        endpoints.append(Endpoint(address))
    return Model(id=name, triton_model=options.get("triton_model", name), task=task, endpoints=tuple(endpoints),
                 created=int(time.time()), info={"task": task})


def static_models(specs: Sequence[str]) -> dict[str, Model]:
    """The table from repeated --upstream flags; a name given twice gets both endpoint lists."""
    out: dict[str, Model] = {}
    for spec in specs:
        model = parse_upstream(spec)
        if model.id in out:
            previous = out[model.id]
            model = replace(model, endpoints=previous.endpoints + model.endpoints, created=previous.created)
        out[model.id] = model
    return out


class KubernetesDiscovery:
    """Watches LLMDeployments and their EndpointSlices (in `namespaces`, or cluster-wide when empty)
    in daemon threads and calls `publish(models)` with the whole table after every change."""

    def __init__(self, publish: Callable[[dict[str, Model]], None], namespaces: Sequence[str] = (),
                 kubeconfig: str | None = None) -> None:
        self.publish = publish
        self.namespaces = list(namespaces)
        self.qualified = len(self.namespaces) != 1
        self.kubeconfig = kubeconfig
        self._lock = threading.Lock()
        self._llmds: dict[tuple[str, str], dict[str, Any]] = {}
        self._slices: dict[tuple[str, str], dict[str, Any]] = {}
        self._listed: set[str] = set()
        self._watches = 0
        self._stop = threading.Event()

    def start(self) -> None:
        from kubernetes import client

        from batchline import kube_config

        kube_config.load(self.kubeconfig)
        api_client = client.ApiClient()
        custom, discovery = client.CustomObjectsApi(api_client), client.DiscoveryV1Api(api_client)
        scopes: list[str | None] = list(self.namespaces) or [None]
        self._watches = 2 * len(scopes)
        for namespace in scopes:
            if namespace is None:
                llmd_list: Callable[..., Any] = lambda **kw: custom.list_cluster_custom_object(  # noqa: E731
                    api.GROUP, api.VERSION, api.PLURAL, **kw)
                slice_list: Callable[..., Any] = discovery.list_endpoint_slice_for_all_namespaces
            else:
                llmd_list = (lambda ns: lambda **kw: custom.list_namespaced_custom_object(
                    api.GROUP, api.VERSION, ns, api.PLURAL, **kw))(namespace)
                slice_list = (lambda ns: lambda **kw: discovery.list_namespaced_endpoint_slice(ns, **kw))(namespace)
            self._thread(f"llmd:{namespace or '*'}", llmd_list, self._llmds, api_client, {})
            self._thread(f"slices:{namespace or '*'}", slice_list, self._slices, api_client,
                         {"label_selector": api.LABEL_LLMD})

    def stop(self) -> None:
        self._stop.set()

    def _thread(self, name: str, list_fn: Callable[..., Any], store: dict[tuple[str, str], dict[str, Any]],
                api_client: Any, kwargs: dict[str, Any]) -> None:
        threading.Thread(target=self._watch, args=(name, list_fn, store, api_client, kwargs),
                         name=f"gateway-watch-{name}", daemon=True).start()

    def _watch(self, name: str, list_fn: Callable[..., Any], store: dict[tuple[str, str], dict[str, Any]],
               api_client: Any, kwargs: dict[str, Any]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        backoff = 1.0
        while not self._stop.is_set():
            try:
                listed = list_fn(_preload_content=True, **kwargs)
                items, version = _items(listed, api_client)
                with self._lock:
                    for key in [k for k in store if _scope(name, k[0])]:
                        del store[key]
                    for item in items:
                        store[_key(item)] = item
                    self._listed.add(name)
                self._publish()
                backoff = 1.0
                for event in watch.Watch().stream(list_fn, resource_version=version, timeout_seconds=300, **kwargs):
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    obj = obj if isinstance(obj, dict) else api_client.sanitize_for_serialization(obj)
                    with self._lock:
                        if event["type"] == "DELETED":
                            store.pop(_key(obj), None)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            store[_key(obj)] = obj
                    self._publish()
            except ApiException as exc:  # 410 Gone and friends: list again
                log.info("watch %s: %s; listing again", name, exc.status)
            except Exception as exc:  # the API server restarting, a dropped connection
                log.warning("watch %s failed: %s; retrying in %.0f s", name, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _publish(self) -> None:
        """The whole table, once every watch has listed (so a first table is never partial)."""
        with self._lock:
            if len(self._listed) < self._watches:
                return
            llmds, slices = list(self._llmds.values()), list(self._slices.values())
        self.publish(models_from(llmds, slices, qualified=self.qualified))


def _items(listed: Any, api_client: Any) -> tuple[list[dict[str, Any]], str]:
    if isinstance(listed, dict):
        return list(listed.get("items") or []), (listed.get("metadata") or {}).get("resourceVersion", "")
    data = api_client.sanitize_for_serialization(listed)
    return list(data.get("items") or []), (data.get("metadata") or {}).get("resourceVersion", "")


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def _scope(name: str, namespace: str) -> bool:
    scope = name.partition(":")[2]
    return scope == "*" or scope == namespace
