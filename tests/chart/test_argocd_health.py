"""The Argo CD health check for LLMDeployment, run the way Argo CD runs it: Lua 5.1 (Argo CD uses
gopher-lua), the object in the global `obj`, and without the string/math/io/debug libraries that an
argocd-cm override gets unless useOpenLibs is set. Cases come from health_test.yaml, laid out like
argo-cd's resource_customizations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from tests.chart.chart import CHART, REPO

CHECK = CHART / "argocd" / "batchline.dev_LLMDeployment"
SCRIPT = (CHECK / "health.lua").read_text()
CASES = yaml.safe_load((CHECK / "health_test.yaml").read_text())["tests"]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _to_lua(runtime: lua51.LuaRuntime, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any]) -> dict[str, str]:
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    runtime.execute("string, math, io, debug = nil, nil, nil, nil")
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(SCRIPT)
    return dict(result.items())


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_matches_health_test_yaml(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CHECK / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def test_every_testdata_file_has_a_case_and_every_status_is_covered() -> None:
    assert {c["inputPath"] for c in CASES} == {f"testdata/{p.name}" for p in (CHECK / "testdata").glob("*.yaml")}
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded"}
    assert {c["healthStatus"]["status"] for c in CASES} <= ARGO_STATUSES


def test_status_from_the_operator_maps_to_healthy() -> None:
    """A status written by batchline.report.status.compute_status for a serving deployment is Healthy."""
    from batchline.observed import DeploymentView, Observed
    from batchline.report.status import compute_status
    from tests.crd_schema import defaulted

    llmd = {"metadata": {"name": "chat", "namespace": "llm", "generation": 3, "uid": "u"},
            "spec": defaulted({"model": {"source": "hf://org/model"}})}
    dep = DeploymentView(spec_replicas=1, replicas=1, ready_replicas=1, updated_replicas=1,
                         observed_generation=1, generation=1, applied_hash=None)
    built = {"key": "k1", "phase": "Ready", "message": "Build k1 is in the model cache."}
    observed = Observed(deployment=dep, pods=(), nodes=())
    llmd["status"] = compute_status(
        llmd, observed, problems=[], desired=1, now="2026-11-20T09:14:02Z", scale=None, build=built, serving_key="k1"
    )
    assert health(llmd)["status"] == "Healthy"
    llmd["metadata"]["generation"] = 4
    assert health(llmd)["status"] == "Progressing"


@pytest.mark.parametrize(("phase", "expected"), [("Building", "Progressing"), ("Failed", "Degraded")])
def test_a_build_from_the_operator_maps_to_argo_health(phase: str, expected: str) -> None:
    """Argo CD shows a first build as Progressing, not stuck, and a failed build as Degraded with its cause."""
    from batchline.observed import Observed
    from batchline.report.status import compute_status
    from tests.crd_schema import defaulted

    llmd = {"metadata": {"name": "chat", "namespace": "llm", "generation": 1, "uid": "u"},
            "spec": defaulted({"model": {"source": "hf://org/model"}})}
    build = {"key": "k1", "phase": phase, "message": "Build k1: checkpoint has no weights."}
    llmd["status"] = compute_status(
        llmd, Observed(None, (), ()), problems=[], desired=1, now="2026-11-20T09:14:02Z", scale=None, build=build,
        serving_key=None,
    )
    result = health(llmd)
    assert result["status"] == expected and "checkpoint has no weights" in result["message"]


def test_shipped_copies_are_identical() -> None:
    """The argocd-cm example embeds the script; it must be the chart's, byte for byte."""
    cm = yaml.safe_load((REPO / "examples" / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["data"]["resource.customizations.health.batchline.dev_LLMDeployment"] == SCRIPT


def test_every_condition_and_reason_the_check_reads_is_one_the_operator_sets() -> None:
    """A renamed reason must not leave Argo CD reading one the operator no longer writes."""
    import re

    from batchline.conditions import Reason, Type

    reasons = set(re.findall(r'\.reason\s*==\s*"(\w+)"', SCRIPT))
    types = set(re.findall(r'find\(status\.conditions,\s*"(\w+)"\)', SCRIPT))
    assert reasons and types  # the patterns still match the script
    assert reasons <= {r.value for r in Reason}
    assert types <= {t.value for t in Type}
