"""docs/api-reference.md is the CRD rendered; a schema change without regenerating it fails here."""

from __future__ import annotations

from pathlib import Path

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
