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


class _Obj:
    """Attribute access over a defaulted spec, as CEL's `self.a.b` reads it."""

    def __init__(self, value: dict[str, Any]) -> None:
        self._value = value

    def __getattr__(self, name: str) -> Any:
        value = self._value[name]
        return _Obj(value) if isinstance(value, dict) else value


def _spec_rule_violations(spec: dict[str, Any]) -> list[str]:
    """Messages of the spec-level CEL rules a defaulted spec breaks. Only the plain boolean rules
    (comparisons, `in`, `||`, `!`) are evaluated, by a textual translation into Python; the API server
    runs all of them (tests/integration/test_operator.py)."""
    import re

    out = []
    for rule in schema()["properties"]["spec"]["x-kubernetes-validations"]:
        text = rule["rule"]
        if re.search(r"has\(|\.all\(|size\(|matches\(", text):
            continue
        expr = re.sub(r"!(?!=)", " not ", text.replace("||", " or ").replace("&&", " and "))
        if not eval(expr, {"__builtins__": {}}, {"self": _Obj(spec)}):
            out.append(rule["message"])
    return out


def test_vllm_splits_a_model_over_its_gpus_and_cel_refuses_what_it_cannot_do() -> None:
    def violations(**spec: Any) -> list[str]:
        return _spec_rule_violations(defaulted({"model": {"source": "hf://org/model"}, **spec}))

    for count in (1, 2, 4, 8):
        assert violations(serving={"backend": "vllm"}, resources={"gpu": {"count": count}}) == []
    [odd] = violations(serving={"backend": "vllm"}, resources={"gpu": {"count": 3}})
    assert odd.startswith("spec.resources.gpu.count:") and "tensor parallelism" in odd
    [copies] = violations(serving={"backend": "vllm", "instancesPerReplica": 2}, resources={"gpu": {"count": 2}})
    assert copies.startswith("spec.serving.instancesPerReplica:")
    # The python backend loads a copy per GPU: any count, any instances per replica.
    assert violations(serving={"instancesPerReplica": 2}, resources={"gpu": {"count": 3}}) == []
    [no_gpu] = violations(serving={"backend": "vllm"}, resources={"gpu": {"count": 0}})
    assert "at least one GPU" in no_gpu
    gpu = schema()["properties"]["spec"]["properties"]["resources"]["properties"]["gpu"]["properties"]["count"]
    assert "tensor parallelism" in gpu["description"] and "copy on each GPU" in gpu["description"]


def test_fp32_is_an_explicit_mode_and_none_keeps_the_checkpoints_precision() -> None:
    mode = schema()["properties"]["spec"]["properties"]["quantization"]["properties"]["mode"]
    assert "fp32" in mode["enum"] and mode["default"] == "none"
    assert "checkpoint's precision" in mode["description"] and "float32" in mode["description"]
    assert _spec_rule_violations(defaulted({"model": {"source": "hf://o/m"}, "quantization": {"mode": "fp32"}})) == []
    vllm_fp32 = {"model": {"source": "hf://o/m"}, "quantization": {"mode": "fp32"}, "serving": {"backend": "vllm"}}
    assert _spec_rule_violations(defaulted(vllm_fp32)) == []
    # vLLM reads the compressed-tensors int8/int4 weight-only builds; int8-dynamic is CPU-only torchao.
    for mode in ("int8-weight-only", "int4-weight-only"):
        assert _spec_rule_violations(defaulted({**vllm_fp32, "quantization": {"mode": mode}})) == []
    vllm_dynamic = {**vllm_fp32, "quantization": {"mode": "int8-dynamic"}}
    assert (
        "spec.quantization.mode: the vllm backend supports none, fp32, fp16, bf16, fp8, int8-weight-only and "
        "int4-weight-only."
    ) in _spec_rule_violations(defaulted(vllm_dynamic))


def test_build_resources_and_token_secret_are_optional_with_no_defaults() -> None:
    spec = defaulted({"model": {"source": "hf://org/model", "tokenSecretRef": {"name": "hf"}}})
    assert "build" not in spec and spec["model"]["tokenSecretRef"] == {"name": "hf", "key": "HF_TOKEN"}
    build = schema()["properties"]["spec"]["properties"]["build"]["properties"]["resources"]["properties"]
    assert set(build) == {"cpu", "memory"} and not any("default" in f for f in build.values())
