"""The chart ships the repository's CRDs unchanged, plus kopf's peering CRDs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.chart.chart import CHART, REPO, crds_in_chart

SOURCE = REPO / "crds"
CHART_ONLY = {"kopf-peering.yaml"}


def test_chart_crds_are_byte_identical_to_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert source, "crds/ is empty"
    stale = sorted(name for name, data in source.items() if shipped.get(name) != data)
    assert not stale, f"charts/batchline/crds/ differs from crds/ for {stale}: run scripts/sync-crds"
    assert set(shipped) - set(source) == CHART_ONLY


def test_sync_script_copies_the_crds(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "sync-crds", tmp_path / "scripts")
    shutil.copytree(SOURCE, tmp_path / "crds")
    (tmp_path / "charts" / "batchline" / "crds").mkdir(parents=True)
    subprocess.run([str(tmp_path / "scripts" / "sync-crds")], check=True, timeout=30)
    for src in SOURCE.glob("*.yaml"):
        assert (tmp_path / "charts" / "batchline" / "crds" / src.name).read_bytes() == src.read_bytes()


def test_kopf_peering_crds_match_what_kopf_uses() -> None:
    """kopf looks for kopf.dev/v1 clusterkopfpeerings (cluster) and kopfpeerings (namespaced), and
    keeps its keep-alives in .status, which must survive pruning."""
    peering = {c["spec"]["names"]["plural"]: c for c in crds_in_chart() if c["spec"]["group"] == "kopf.dev"}
    assert {p: c["spec"]["scope"] for p, c in peering.items()} == {
        "clusterkopfpeerings": "Cluster",
        "kopfpeerings": "Namespaced",
    }
    for c in peering.values():
        [version] = c["spec"]["versions"]
        assert version["name"] == "v1" and "subresources" not in version  # kopf patches status in the object
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True


def test_every_chart_crd_parses() -> None:
    for path in (CHART / "crds").glob("*.yaml"):
        assert all(doc["kind"] == "CustomResourceDefinition" for doc in yaml.safe_load_all(path.read_text()))
