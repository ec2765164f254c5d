"""The operator of the local embedded default: the one place that knows what it needs on a local cluster.

A local cluster has no storage class and no large nodes: the model cache is a host folder (mounted by
hostPath, one folder per namespace) and builds run on the process nodes, whose capacity is this
machine's. `settings()` turns that into the operator's environment; `batchline local up` runs the
operator with it as one of the cluster's processes (`--no-operator` leaves it out) and writes it to
`operator.env` in the cluster's state dir; the demo runs the same operator, adding only its Prometheus.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from batchline.config import parse_bytes
from devcluster.binaries import cache_root

CRD = Path(__file__).resolve().parents[2] / "crds" / "llmdeployment.yaml"
MODEL_CACHE_DIR = "model-cache"  # below the cache root, so builds survive `local down`
# The builder gets the node's cores less half a core (room for one CPU Triton pod of the example while a
# new build runs), at most 2, and half its memory, at most 6Gi: what the main job's build needs.
BUILD_CPU_MAX_M, BUILD_CPU_MIN_M, BUILD_CPU_HEADROOM_M = 2000, 500, 500
BUILD_MEMORY_MAX = 6 * 2**30


def model_cache() -> Path:
    return cache_root() / MODEL_CACHE_DIR


def millicores(quantity: str) -> int:
    text = str(quantity).strip()
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def builder_size(nodes: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """(cpu, memory) requests for build pods that fit the smallest of `nodes` (Node objects)."""
    allocatable = [n["status"]["allocatable"] for n in nodes]
    cpu_m = min((millicores(a["cpu"]) for a in allocatable), default=BUILD_CPU_MAX_M + BUILD_CPU_HEADROOM_M)
    memory = min((parse_bytes(a["memory"]) for a in allocatable), default=2 * BUILD_MEMORY_MAX)
    cpu_m = max(min(cpu_m - BUILD_CPU_HEADROOM_M, BUILD_CPU_MAX_M), min(BUILD_CPU_MIN_M, cpu_m))
    memory_mi = min(memory // 2, BUILD_MEMORY_MAX) // 2**20
    cpu = str(cpu_m // 1000) if cpu_m % 1000 == 0 else f"{cpu_m}m"
    return cpu, f"{memory_mi // 1024}Gi" if memory_mi % 1024 == 0 else f"{memory_mi}Mi"


def settings(process_nodes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The operator's environment on a local cluster whose builds run on `process_nodes`."""
    cpu, memory = builder_size(process_nodes)
    return {
        "BATCHLINE_MODEL_CACHE_HOST_PATH": str(model_cache()),
        "BATCHLINE_BUILD_CPU": cpu,
        "BATCHLINE_BUILD_MEMORY": memory,
    }


def argv(kubeconfig: Path, liveness_port: int) -> list[str]:
    return [sys.executable, "-m", "batchline.cli", "operator", "--standalone", f"--kubeconfig={kubeconfig}",
            f"--liveness=http://127.0.0.1:{liveness_port}/healthz"]


def env_file_text(env: Mapping[str, str]) -> str:
    """`operator.env`: KEY=value lines, for `env $(cat operator.env) batchline operator ...`."""
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
