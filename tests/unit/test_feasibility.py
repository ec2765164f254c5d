"""Specs the schema accepts but the cluster cannot honour get a reason a user can act on."""

from __future__ import annotations

import pytest

from batchline.observed import NodeView
from batchline.report import feasibility
from tests.crd_schema import llmd

H100 = "NVIDIA-H100-80GB-HBM3"
NODES = (
    NodeView("gpu-0", {"nvidia.com/gpu.product": H100}, 8),
    NodeView("gpu-1", {"nvidia.com/gpu.product": H100}, 8),
    NodeView("cpu-0", {}, 0),
)


@pytest.mark.parametrize(
    "source, reason",
    [
        pytest.param("hf://HuggingFaceTB/SmolLM2-135M@main", None, id="hf-with-revision"),
        pytest.param("pvc://models/smollm2", None, id="pvc"),
        pytest.param("/mnt/models/smollm2", None, id="local-path"),
        pytest.param("s3://bucket/model", "UnsupportedModelSource", id="s3"),
        pytest.param("models/smollm2", "UnsupportedModelSource", id="relative-path"),
        pytest.param("hf://only-org", "InvalidModelSource", id="hf-missing-name"),
    ],
)
def test_model_source(source: str, reason: str | None) -> None:
    problem = feasibility.check_source(source)
    assert (problem.reason if problem else None) == reason
    if problem:
        assert problem.blocking and source in problem.message and "hf://org/name" in problem.message


def test_unknown_gpu_product_names_the_products_that_exist() -> None:
    spec = llmd(resources={"gpu": {"count": 1, "product": "NVIDIA-B200"}})["spec"]
    [problem] = feasibility.check(spec, NODES)
    assert problem.reason == "GPUProductNotFound" and not problem.blocking
    assert f"{H100} (16 GPUs)" in problem.message


def test_more_gpus_than_any_node_offers() -> None:
    spec = llmd(resources={"gpu": {"count": 12}})["spec"]
    [problem] = feasibility.check(spec, NODES)
    assert problem.reason == "InsufficientGPUs"
    assert "requests 12" in problem.message and "offers 8" in problem.message


def test_node_selector_that_no_gpu_node_matches() -> None:
    spec = llmd(resources={"gpu": {"count": 1}, "nodeSelector": {"zone": "mars"}})["spec"]
    assert [p.reason for p in feasibility.check(spec, NODES)] == ["NoMatchingGPUNodes"]


def test_cordoned_nodes_do_not_count() -> None:
    cordoned = tuple(NodeView(n.name, n.labels, n.allocatable_gpus, schedulable=False) for n in NODES)
    spec = llmd()["spec"]
    assert [p.reason for p in feasibility.check(spec, cordoned)] == ["NoMatchingGPUNodes"]


def test_feasible_and_cpu_only_specs_pass() -> None:
    assert feasibility.check(llmd(resources={"gpu": {"count": 8, "product": H100}})["spec"], NODES) == []
    assert feasibility.check(llmd(resources={"gpu": {"count": 0}})["spec"], ()) == []
