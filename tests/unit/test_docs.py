"""docs/api-reference.md is the CRD rendered; a schema change without regenerating it fails here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from batchline_tools.apidocs import render
from tests.crd_schema import crd

REPO = Path(__file__).resolve().parents[2]


def test_api_reference_matches_the_crd() -> None:
    expected = render(crd())
    assert (REPO / "docs" / "api-reference.md").read_text() == expected, (
        "regenerate: python -m batchline_tools.apidocs crds/llmdeployment.yaml > docs/api-reference.md"
    )


def test_reference_lists_every_spec_field_with_its_default() -> None:
    text = render(crd())
    assert "| `spec.autoscaling.targetLatencyMs` | integer | `2000` |" in text
    assert "| `spec.model.source` (required) | string |" in text
    assert "fp8 is GPU-only" in text


def _minimum_kubernetes() -> str:
    """The chart's kubeVersion, ">=1.30.0-0", as the minor version "1.30"."""
    chart = yaml.safe_load((REPO / "charts" / "batchline" / "Chart.yaml").read_text())
    match = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", chart["kubeVersion"])
    assert match, chart["kubeVersion"]
    return match.group(1)


def test_the_docs_claim_the_kubernetes_version_the_chart_requires() -> None:
    minimum = _minimum_kubernetes()
    for doc in ("docs/quickstart-gpu.md", "charts/batchline/README.md"):
        text = (REPO / doc).read_text()
        claims = re.findall(r"Kubernetes (\d+\.\d+)(?:\+| or newer| or later)", text)
        assert claims, f"{doc} does not say which Kubernetes it needs"
        assert set(claims) == {minimum}, f"{doc} claims Kubernetes {claims}, the chart requires {minimum}"


def test_the_quick_start_serves_through_generate_not_infer() -> None:
    """The vllm backend's decoupled models cannot answer /infer; the docs' requests use generate(_stream)."""
    text = (REPO / "docs" / "quickstart-gpu.md").read_text()
    urls = re.findall(r"curl [^\n]*?(localhost:\d+/v2/models/\w+/\w+)", text)
    assert urls and all(u.endswith(("/generate", "/generate_stream")) for u in urls), urls
