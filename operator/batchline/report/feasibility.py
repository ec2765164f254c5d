"""Checks a schema-valid spec against what the cluster can honour, before pods sit Pending silently."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchline import api
from batchline.conditions import Reason
from batchline.observed import NodeView

SOURCE_SCHEMES = ("hf://", "pvc://")
_HF = re.compile(r"^hf://[^/@]+/[^/@]+(@[^@/]+)?$")
_PVC = re.compile(r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?$")


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    blocking: bool  # True: nothing can be deployed; False: deploy, but say why it will not run


def check_source(source: str) -> Problem | None:
    if source.startswith("/") or _HF.match(source) or _PVC.match(source):
        return None
    if source.startswith(SOURCE_SCHEMES):
        return Problem(
            Reason.INVALID_MODEL_SOURCE,
            f"spec.model.source {source!r} is malformed: use hf://org/name[@revision] or pvc://claim[/path].",
            blocking=True,
        )
    scheme = source.split("://", 1)[0] if "://" in source else source
    return Problem(
        Reason.UNSUPPORTED_MODEL_SOURCE,
        f"spec.model.source {source!r} uses {scheme!r}, which Batchline cannot read. "
        "Use hf://org/name[@revision], pvc://claim/path or an absolute path.",
        blocking=True,
    )


def matching_nodes(resources: Mapping[str, Any], nodes: Iterable[NodeView]) -> list[NodeView]:
    """Schedulable nodes that carry GPUs and satisfy the product and node selector."""
    want = dict(resources.get("nodeSelector") or {})
    if resources["gpu"].get("product"):
        want[api.GPU_PRODUCT_LABEL] = resources["gpu"]["product"]
    return [
        n
        for n in nodes
        if n.schedulable and n.allocatable_gpus > 0 and all(n.labels.get(k) == v for k, v in want.items())
    ]


def _products(nodes: Iterable[NodeView]) -> str:
    totals: dict[str, int] = {}
    for n in nodes:
        if n.allocatable_gpus > 0:
            key = n.gpu_product or "(unlabelled)"
            totals[key] = totals.get(key, 0) + n.allocatable_gpus
    return ", ".join(f"{p} ({g} GPUs)" for p, g in sorted(totals.items())) or "none"


def check_gpus(resources: Mapping[str, Any], nodes: Iterable[NodeView]) -> Problem | None:
    count = resources["gpu"]["count"]
    if count == 0:
        return None
    nodes = list(nodes)
    product = resources["gpu"].get("product")
    if product and not any(n.gpu_product == product for n in nodes):
        return Problem(
            Reason.GPU_PRODUCT_NOT_FOUND,
            f"No node has {api.GPU_PRODUCT_LABEL}={product}. GPUs in the cluster: {_products(nodes)}. "
            "Set spec.resources.gpu.product to one of them, or add such nodes.",
            blocking=False,
        )
    candidates = matching_nodes(resources, nodes)
    if not candidates:
        return Problem(
            Reason.NO_MATCHING_GPU_NODES,
            f"No schedulable node with GPUs matches spec.resources (product and nodeSelector). "
            f"GPUs in the cluster: {_products(nodes)}.",
            blocking=False,
        )
    largest = max(n.allocatable_gpus for n in candidates)
    if count > largest:
        return Problem(
            Reason.INSUFFICIENT_GPUS,
            f"Each replica requests {count} {api.GPU_RESOURCE} but the largest matching node offers {largest}. "
            f"Lower spec.resources.gpu.count to {largest} or less, or add larger nodes.",
            blocking=False,
        )
    return None


def check(spec: Mapping[str, Any], nodes: Iterable[NodeView]) -> list[Problem]:
    return [p for p in (check_source(spec["model"]["source"]), check_gpus(spec["resources"], nodes)) if p]
