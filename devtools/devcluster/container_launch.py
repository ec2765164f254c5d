"""How one container of a pod becomes a local process: its argv, environment, working directory and files.

Only two commands run, keyed on `command[0]`: `tritonserver` (the nvidia-pytriton wheel's server, bound
to the pod's IP) and `batchline` (this package's CLI, on this interpreter). Processes see the host's
file system, so paths under a volume's mountPath in args, env values and workingDir are rewritten to
the folder backing that volume, and the termination message path to a file in the pod's folder.
Everything here is a pure function of the pod, except `create_volume_dirs`.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_repo_builder.triton_server import TritonServerError, server_environment, tritonserver_binary

UNSUPPORTED_EXIT_CODE = 127
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
SHM = "/dev/shm"  # the host's; an emptyDir mounted there needs nothing
SERVICE_ACCOUNT_VOLUME = "kube-api-access-"  # the ServiceAccount admission plugin's projected volume
FIELD_LABEL = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodSpecError(ValueError):
    """The pod uses something the local process node cannot provide; the pod fails with this message."""


@dataclass(frozen=True)
class PodContext:
    """What the node agent decides for one pod."""

    pod_ip: str
    host_ip: str
    node_name: str
    pod_dir: Path
    host_env: Mapping[str, str]
    triton_backend_dir: Callable[[], Path]  # prepared on first use
    read_secret: Callable[[str, str], Mapping[str, str] | None] = lambda namespace, name: None  # decoded data


@dataclass(frozen=True)
class ContainerLaunch:
    """An empty `argv` means the command is not supported: the container exits at once with
    UNSUPPORTED_EXIT_CODE and `unsupported` as its termination message."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_file: Path
    fallback_to_logs: bool
    unsupported: str = ""


def container_dir(pod_dir: Path, container: str) -> Path:
    """Logs (`<restartCount>.log`, as kubectl logs has no kubelet to ask), pid and termination files."""
    return pod_dir / container


def emptydir_path(pod_dir: Path, volume: str) -> Path:
    return pod_dir / "volumes" / volume


def volume_paths(pod: Mapping[str, Any], pod_dir: Path) -> dict[str, Path | None]:
    """Host folder behind each volume (None: nothing to provide); PodSpecError for other kinds."""
    paths: dict[str, Path | None] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "hostPath" in volume:
            paths[name] = Path(volume["hostPath"]["path"])
        elif "emptyDir" in volume:
            paths[name] = emptydir_path(pod_dir, name)
        elif "projected" in volume and name.startswith(SERVICE_ACCOUNT_VOLUME):
            paths[name] = None  # the service account token: nothing here reads it
        else:
            kind = next((key for key in volume if key != "name"), "unknown")
            raise PodSpecError(
                f"volume {name!r} is {kind}: the local process node supports hostPath and emptyDir volumes, "
                "and claims bound to a hostPath or local PersistentVolume, only (local mode uses hostPath)"
            )
    return paths


def create_volume_dirs(pod: Mapping[str, Any], pod_dir: Path) -> None:
    """emptyDir folders, and hostPath folders of type DirectoryOrCreate."""
    for volume in pod["spec"].get("volumes") or []:
        if "emptyDir" in volume:
            emptydir_path(pod_dir, volume["name"]).mkdir(parents=True, exist_ok=True)
        elif volume.get("hostPath", {}).get("type") == "DirectoryOrCreate":
            Path(volume["hostPath"]["path"]).mkdir(parents=True, exist_ok=True)


def path_map(pod: Mapping[str, Any], container: Mapping[str, Any], pod_dir: Path) -> list[tuple[str, str]]:
    """(container path, host path) pairs, longest container path first."""
    volumes = volume_paths(pod, pod_dir)
    pairs = [
        (container.get("terminationMessagePath", DEFAULT_TERMINATION_PATH), str(termination_file(pod_dir, container)))
    ]
    for mount in container.get("volumeMounts") or []:
        if "subPathExpr" in mount:
            raise PodSpecError(f"volume mount {mount['mountPath']!r}: subPathExpr is not supported")
        host = volumes[mount["name"]]
        if host is None or mount["mountPath"].rstrip("/") == SHM:
            continue
        pairs.append((mount["mountPath"].rstrip("/"), str(host / mount.get("subPath", ""))))
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def termination_file(pod_dir: Path, container: Mapping[str, Any]) -> Path:
    return container_dir(pod_dir, container["name"]) / "termination-log"


def rewrite_path(value: str, pairs: Sequence[tuple[str, str]]) -> str:
    """`value`, or the part after its first "=" (`--flag=/path`, `KEY=/path`), with a container path
    prefix replaced by its host path."""
    for inside, host in pairs:
        if value == inside or value.startswith(inside + "/"):
            return host + value[len(inside) :]
    head, sep, tail = value.partition("=")
    if sep and tail:
        mapped = rewrite_path(tail, pairs)
        if mapped != tail:
            return head + sep + mapped
    return value


def expand(value: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) references to the container's own variables; $$ is a literal $."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return variables.get(name, match.group(0))

    return VARIABLE.sub(replace, value)


def field_value(pod: Mapping[str, Any], path: str, ctx: PodContext) -> str:
    """A downward API `fieldRef` value."""
    meta = pod["metadata"]
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": ctx.node_name,
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
        "status.hostIP": ctx.host_ip,
    }
    if path in fields:
        return str(fields[path])
    if match := FIELD_LABEL.fullmatch(path):
        return str(meta.get(match.group(1), {}).get(match.group(2), ""))
    raise PodSpecError(f"env fieldRef {path!r} is not supported on the local process node")


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], ctx: PodContext) -> dict[str, str]:
    """The container's own variables (value, fieldRef, secretKeyRef), in order, with $(VAR) expanded."""
    if container.get("envFrom"):
        raise PodSpecError(f"container {container['name']!r}: envFrom is not supported on the local process node")
    env: dict[str, str] = {}
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[var["name"]] = field_value(pod, source["fieldRef"]["fieldPath"], ctx)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = (ctx.read_secret(pod["metadata"]["namespace"], ref["name"]) or {}).get(ref["key"])
            if value is not None:
                env[var["name"]] = value
            elif not ref.get("optional"):
                raise PodSpecError(f"env {var['name']!r}: secret {ref['name']!r} has no key {ref['key']!r}")
        else:
            kind = next(iter(source), "unknown")
            raise PodSpecError(f"env {var['name']!r}: valueFrom.{kind} is not supported on the local process node")
    return env


def cpu_threads(container: Mapping[str, Any]) -> int | None:
    """max(1, ceil(cpu limit, else request)); None when the container sets neither."""
    resources = container.get("resources") or {}
    cpu = (resources.get("limits") or {}).get("cpu") or (resources.get("requests") or {}).get("cpu")
    if cpu is None:
        return None
    text = str(cpu)
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.ceil(cores))


def launch(pod: Mapping[str, Any], container: Mapping[str, Any], ctx: PodContext) -> ContainerLaunch:
    """The process for `container`; PodSpecError when the pod cannot run here at all."""
    pairs = path_map(pod, container, ctx.pod_dir)
    own = container_env(pod, container, ctx)
    words = [expand(word, own) for word in [*(container.get("command") or []), *(container.get("args") or [])]]
    words = [rewrite_path(word, pairs) for word in words]
    env = {**ctx.host_env, "HOSTNAME": pod["metadata"]["name"]}
    if (threads := cpu_threads(container)) is not None:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    program = os.path.basename(words[0]) if words else ""
    argv: list[str] = []
    unsupported = ""
    if program == "tritonserver":
        try:
            env = server_environment(env)
            argv = [str(tritonserver_binary()), f"--backend-directory={ctx.triton_backend_dir()}", *words[1:]]
        except TritonServerError as err:
            raise PodSpecError(str(err)) from None
        argv += [f"--http-address={ctx.pod_ip}", f"--grpc-address={ctx.pod_ip}", f"--metrics-address={ctx.pod_ip}"]
    elif program == "batchline":
        argv = [sys.executable, "-m", "batchline.cli", *words[1:]]
    else:
        shown = words[0] if words else "(none: the image's entrypoint)"
        unsupported = (
            f"the local process node runs only `tritonserver` and `batchline` containers, not {shown!r} "
            f"(container {container['name']!r})"
        )
    env |= {name: rewrite_path(value, pairs) for name, value in own.items()}
    working_dir = container.get("workingDir")
    return ContainerLaunch(
        name=container["name"],
        argv=argv,
        env=env,
        cwd=Path(rewrite_path(working_dir, pairs)) if working_dir else ctx.pod_dir,
        termination_file=termination_file(ctx.pod_dir, container),
        fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
        unsupported=unsupported,
    )
