"""The Argo CD example as Argo CD would sync it: every object of both Applications rendered, and no two of
them the same (kind, namespace, name), which Argo CD would report as a shared resource and keep fighting over."""

from __future__ import annotations

import fnmatch
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devcluster.binaries import KUBE_VERSION
from tests.chart.chart import REPO, Manifest, helm
from tests.crd_schema import schema

APPLICATIONS = [d for d in yaml.safe_load_all((REPO / "examples" / "argocd" / "application.yaml").read_text()) if d]
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "CustomResourceDefinition", "Namespace"}
ObjectId = tuple[str, str, str]


def _helm_source(app: Manifest, tmp_path: Path) -> list[Manifest]:
    source, namespace = app["spec"]["source"], app["spec"]["destination"]["namespace"]
    values = tmp_path / f"{app['metadata']['name']}-values.yaml"
    values.write_text(yaml.safe_dump(source["helm"].get("valuesObject") or {}))
    # Argo CD renders with `helm template --include-crds` and applies crds/ too.
    out = helm("template", source["helm"].get("releaseName", app["metadata"]["name"]), str(REPO / source["path"]),
               f"--namespace={namespace}", f"--kube-version={KUBE_VERSION}", "--include-crds", f"--values={values}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _directory_source(app: Manifest) -> list[Manifest]:
    source = app["spec"]["source"]
    directory = source.get("directory") or {}
    folder = REPO / source["path"]
    files = sorted(folder.rglob("*") if directory.get("recurse") else folder.glob("*"))
    include = directory.get("include", "*")
    wanted = [f for f in files if f.suffix in (".yaml", ".yml", ".json") and fnmatch.fnmatch(f.name, include)]
    return [d for f in wanted for d in yaml.safe_load_all(f.read_text()) if d]


def rendered(app: Manifest, tmp_path: Path) -> list[Manifest]:
    return _helm_source(app, tmp_path) if "helm" in app["spec"]["source"] else _directory_source(app)


def object_id(manifest: Manifest, default_namespace: str) -> ObjectId:
    kind = manifest["kind"]
    namespace = "" if kind in CLUSTER_SCOPED else manifest["metadata"].get("namespace", default_namespace)
    return kind, namespace, manifest["metadata"]["name"]


def duplicates(ids: list[ObjectId]) -> list[ObjectId]:
    return sorted(i for i, n in Counter(ids).items() if n > 1)


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[ObjectId]]:
    tmp_path = tmp_path_factory.mktemp("argocd")
    return {
        app["metadata"]["name"]: [object_id(m, app["spec"]["destination"]["namespace"])
                                  for m in rendered(app, tmp_path)]
        for app in APPLICATIONS
    }


def test_the_example_has_an_operator_and_a_models_application(synced: dict[str, list[ObjectId]]) -> None:
    assert set(synced) == {"batchline", "batchline-models"}
    assert ("StatefulSet", "batchline", "batchline") in synced["batchline"]
    assert ("CustomResourceDefinition", "", "llmdeployments.batchline.dev") in synced["batchline"]
    assert synced["batchline-models"] and {k for k, _, _ in synced["batchline-models"]} == {"LLMDeployment"}


def test_no_two_objects_share_kind_namespace_and_name(synced: dict[str, list[ObjectId]]) -> None:
    for app, ids in synced.items():
        assert duplicates(ids) == [], app
    assert duplicates([i for ids in synced.values() for i in ids]) == []


def test_the_duplicate_check_catches_the_whole_examples_folder() -> None:
    """Syncing all of examples/, as the example once did, holds two LLMDeployments named smollm2."""
    app = {"spec": {"source": {"path": "examples", "directory": {"include": "*.yaml"}},
                    "destination": {"namespace": "batchline"}}}
    ids = [object_id(m, "batchline") for m in _directory_source(app)]
    assert ("LLMDeployment", "batchline", "smollm2") in duplicates(ids)


def test_the_synced_models_match_the_crd_schema(tmp_path: Path) -> None:
    """The structural schema only (the API server also runs the CEL rules, which tests/unit/test_crd.py covers)."""
    [models] = [a for a in APPLICATIONS if a["metadata"]["name"] == "batchline-models"]
    crd_schema: dict[str, Any] = schema()
    for manifest in rendered(models, tmp_path):
        jsonschema.validate(manifest["spec"], crd_schema["properties"]["spec"])
        assert manifest["apiVersion"] == "batchline.dev/v1alpha1"
        assert len(manifest["metadata"]["name"]) <= 52


def test_the_operator_application_sets_the_monitoring_labels(tmp_path: Path) -> None:
    [operator] = [a for a in APPLICATIONS if a["metadata"]["name"] == "batchline"]
    manifests = _helm_source(operator, tmp_path)
    monitors = [m for m in manifests if m["kind"] in ("ServiceMonitor", "PrometheusRule")]
    assert sorted(m["kind"] for m in monitors) == ["PrometheusRule", "ServiceMonitor"]
    assert all(m["metadata"]["labels"]["release"] == "kube-prometheus-stack" for m in monitors)
    [sts] = [m for m in manifests if m["kind"] == "StatefulSet"]
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BATCHLINE_MONITOR_LABELS"] == '{"release":"kube-prometheus-stack"}'
