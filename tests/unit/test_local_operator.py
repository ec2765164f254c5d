"""What the local embedded default's operator runs with (devcluster/local_operator.py)."""

from __future__ import annotations

from pathlib import Path
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


def test_the_local_gateway_serves_every_namespace_on_loopback_and_holds_long_enough_for_a_cold_start() -> None:
    from batchline.cli import _parser
    from devcluster import local_gateway

    command = local_gateway.argv(Path("/state/gateway.kubeconfig"), 8123)
    assert command[1:4] == ["-m", "batchline.cli", "gateway"]
    args = _parser(command[3:]).parse_args(command[3:])  # flags `batchline gateway` really has
    assert args.namespace is None and args.upstream is None  # every namespace: model ids namespace/name
    assert (args.host, args.port, args.kubeconfig) == ("127.0.0.1", 8123, "/state/gateway.kubeconfig")
    # A model at zero gets a replica started within the hold: 240 s was needed on a loaded 2-core machine
    # (tests/integration/test_scale_from_zero.py); the gateway's own default, 60 s, is too short for that.
    assert args.hold_timeout >= 240
    assert local_gateway.base_url(8123) == "http://127.0.0.1:8123/v1"
