"""The CRD teaches the API: structure, descriptions, printer columns, defaults and CEL rules."""

from __future__ import annotations

from typing import Any

from tests.crd_schema import crd, defaulted, schema


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, sub in (node.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{key}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    return out


def test_names_scope_and_subresources() -> None:
    c = crd()
    assert c["spec"]["group"] == "batchline.dev"
    assert c["spec"]["names"]["kind"] == "LLMDeployment"
    assert c["spec"]["names"]["plural"] == "llmdeployments"
    assert c["spec"]["names"]["shortNames"] == ["llmd"]
    assert c["spec"]["scope"] == "Namespaced"
    version = c["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}


def test_every_field_is_described_and_typed() -> None:
    missing = [
        path
        for path, node in _walk(schema()["properties"]["spec"], "spec")
        + _walk(schema()["properties"]["status"], "status")
        if "description" not in node
    ]
    untyped = [
        path for path, node in _walk(schema(), "") if "type" not in node and not node.get("x-kubernetes-int-or-string")
    ]
    assert missing == []
    assert untyped == []


def test_printer_columns_cover_what_users_scan() -> None:
    cols = {c["name"]: c for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert {"Model", "Quant", "Replicas", "P95(ms)", "Ready", "Age"} <= set(cols)
    assert cols["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    default_view = [c["name"] for c in cols.values() if not c.get("priority")]
    assert default_view == ["Model", "Quant", "Replicas", "P95(ms)", "Ready", "Build", "Age"]


def test_defaults_fill_a_minimal_spec() -> None:
    spec = defaulted({"model": {"source": "hf://org/model"}})
    assert spec["model"]["task"] == "text-generation"
    assert spec["quantization"]["mode"] == "none"
    assert spec["serving"]["backend"] == "python"
    assert spec["serving"]["dynamicBatching"]["enabled"] is True
    assert spec["resources"]["gpu"]["count"] == 1
    assert spec["autoscaling"]["minReplicas"] == 1 and spec["autoscaling"]["maxReplicas"] == 4
    assert spec["autoscaling"]["latencyQuantile"] == 0.95


def test_cross_field_rules_exist_with_field_paths() -> None:
    rules = [r for _, node in _walk(schema(), "") for r in node.get("x-kubernetes-validations", [])]
    text = " ".join(r["rule"] for r in rules)
    assert "self.minReplicas <= self.maxReplicas" in text
    assert "fp8" in text and "vllm" in text
    assert all(r["message"] for r in rules)
