"""Test helper: the CRD's own schema, and its defaults applied as the API server applies them."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / "llmdeployment.yaml"


@cache
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


def schema() -> dict[str, Any]:
    root: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def _default(node: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and node.get("type") == "object":
        for key, sub in (node.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _default(sub, value[key])
    elif isinstance(value, list) and "items" in node:
        return [_default(node["items"], v) for v in value]
    return value


def defaulted(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every schema default filled in, like the API server does on write."""
    result: dict[str, Any] = _default(schema()["properties"]["spec"], copy.deepcopy(spec))
    return result


def llmd(name: str = "chat", namespace: str = "team-a", generation: int = 1, **spec: Any) -> dict[str, Any]:
    spec.setdefault("model", {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"})
    return {
        "apiVersion": "batchline.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-1234", "generation": generation},
        "spec": defaulted(spec),
    }
