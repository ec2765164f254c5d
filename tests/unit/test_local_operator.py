"""What the local embedded default's operator runs with (devcluster/local_operator.py)."""

from __future__ import annotations

from typing import Any

import pytest

from batchline.config import parse_bytes
from devcluster import local_operator


def node(cpu: str, memory: str) -> dict[str, Any]:
    return {"status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "32"}}}


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ([node("2", "23Gi")], ("1500m", "6Gi")),  # room for one 500m Triton pod of the example beside a build
        ([node("16", "64Gi")], ("2", "6Gi")),
        ([node("1", "4Gi")], ("500m", "2Gi")),
        ([node("16", "64Gi"), node("4", "8129836Ki")], ("2", "3969Mi")),  # the smallest node decides
        ([], ("2", "6Gi")),
    ],
)
def test_builder_requests_fit_the_process_nodes(nodes: list[dict[str, Any]], expected: tuple[str, str]) -> None:
    cpu, memory = local_operator.builder_size(nodes)
    assert (cpu, memory) == expected
    for n in nodes:
        assert local_operator.millicores(cpu) <= local_operator.millicores(n["status"]["allocatable"]["cpu"])
        assert parse_bytes(memory) <= parse_bytes(n["status"]["allocatable"]["memory"])


def test_settings_mount_the_host_cache_and_size_the_builder() -> None:
    settings = local_operator.settings([node("2", "23Gi")])
    assert settings == {
        "BATCHLINE_MODEL_CACHE_HOST_PATH": str(local_operator.model_cache()),
        "BATCHLINE_BUILD_CPU": "1500m",
        "BATCHLINE_BUILD_MEMORY": "6Gi",
    }
    assert local_operator.env_file_text(settings).splitlines()[0] == "BATCHLINE_BUILD_CPU=1500m"
