"""`batchline local up|down|status`: a local control plane with fake GPU nodes and process nodes (which
run tritonserver and batchline pods as local processes), the operator with the settings such a
cluster needs and the OpenAI-compatible gateway, for development and tests."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from devcluster.controlplane import LocalCluster
from devcluster.nodes import DEFAULT_GPU_PRODUCT, GPU_RESOURCE


def register(subparsers: Any) -> None:
    local = subparsers.add_parser("local", help="local Kubernetes control plane with fake GPU nodes",
                                  description=__doc__)
    actions = local.add_subparsers(dest="local_action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default="default", help="cluster name; each has its own state dir")
    common.add_argument("--state-dir", type=Path,
                        help="state dir (default: $BATCHLINE_LOCAL_DIR or ~/.cache/batchline/local, plus /NAME)")

    up = actions.add_parser("up", parents=[common], help="start (building binaries on first run); idempotent")
    up.add_argument("--nodes", type=int, default=2, help="fake GPU nodes (default: 2)")
    up.add_argument("--gpus-per-node", type=int, default=8, help=f"{GPU_RESOURCE} per node (default: 8)")
    up.add_argument("--gpu-product", default=DEFAULT_GPU_PRODUCT, help="nvidia.com/gpu.product label")
    up.add_argument("--process-nodes", type=int, default=1,
                    help="nodes whose pods run as local processes (tritonserver, batchline; default: 1)")
    up.add_argument("--no-operator", dest="operator", action="store_false",
                    help="do not run the operator (stop it if it runs), e.g. to run `batchline operator` "
                         "yourself with the settings in <state dir>/operator.env")
    up.add_argument("--no-gateway", dest="gateway", action="store_false",
                    help="do not run the OpenAI-compatible gateway (stop it if it runs)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait once binaries exist")
    up.set_defaults(func=_up)

    down = actions.add_parser("down", parents=[common],
                              help="stop everything (the operator and the gateway too) and remove the state dir")
    down.set_defaults(func=_down)

    status = actions.add_parser("status", parents=[common], help="components, nodes, GPUs; exit 1 if not up")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)


def _cluster(args: argparse.Namespace) -> LocalCluster:
    return LocalCluster(args.name, args.state_dir)


def _up(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    try:
        kubeconfig = cluster.up(args.nodes, args.gpus_per_node, args.gpu_product, args.timeout, args.process_nodes,
                                operator=args.operator, gateway=args.gateway)
    except (RuntimeError, TimeoutError) as err:
        print(f"batchline local up failed: {err}\n(logs: {cluster.state_dir / 'logs'})", file=sys.stderr)
        return 1
    print(f"operator kubeconfig: {cluster.operator_kubeconfig}", file=sys.stderr)
    if args.operator:
        print(f"operator: running, log {cluster.layout.log('operator')}", file=sys.stderr)
    print(f"operator settings: {cluster.operator_env_file}", file=sys.stderr)
    print(f"audit log: {cluster.audit_log}", file=sys.stderr)
    if args.gateway:
        print(f"gateway: running (every namespace, models namespace/name), log {cluster.layout.log('gateway')}",
              file=sys.stderr)
        # stdout: KEY=value lines for `export $(batchline local up)`; KUBECONFIG stays last (`| tail -1`).
        print(f"OPENAI_BASE_URL={cluster.openai_base_url}")
    print(f"KUBECONFIG={kubeconfig}")
    return 0


def _down(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    cluster.down()
    print(f"cluster {cluster.name!r} stopped, {cluster.state_dir} removed", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _cluster(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(_format(status))
    return 0 if status["up"] else 1


def _format(status: dict[str, Any]) -> str:
    if not status["components"]:
        return f"cluster {status['name']!r}: not created (state dir {status['state_dir']})"
    lines = [f"cluster {status['name']!r}: {'up' if status['up'] else 'NOT up'} (state dir {status['state_dir']})",
             f"  server {status['server']} (kube {status['kube_version']})",
             f"  kubeconfig {status['kubeconfig']}", f"  operator kubeconfig {status['operator_kubeconfig']}",
             f"  audit log {status['audit_log']}"]
    if status.get("openai_base_url"):
        lines.append(f"  OpenAI API {status['openai_base_url']} (the gateway; models namespace/name)")
    if status.get("pod_range"):
        lines.append(f"  process node pod IPs from {status['pod_range']}")
    lines.append("components:")
    for name, comp in status["components"].items():
        state = "healthy" if comp["healthy"] else "running, not healthy" if comp["running"] else "NOT running"
        lines.append(f"  {name:<24} {state:<21} pid {comp['pid'] or '-':<8} port {comp['port']}")
    lines.append(f"nodes: {len(status['nodes'])}, {GPU_RESOURCE} allocatable: {status['gpu_allocatable']}")
    for node in status["nodes"]:
        gpus = f"{node['gpus']} x {node['gpu_product']}" if node["gpus"] else "no GPUs"
        runs = {"kwok": "pods simulated by KWOK", "process": f"{node['cpu']} CPUs, pods run as local processes"}
        lines.append(f"  {node['name']:<24} {'Ready' if node['ready'] else 'NotReady':<9} {gpus}; "
                     f"{runs.get(node['runner'], 'pods run by nothing here')}")
    return "\n".join(lines)
