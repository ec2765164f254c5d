"""Shared fixtures.

`cluster` is a real local control plane (the code behind `batchline local up`), started once
per session and torn down at the end; BATCHLINE_KEEP_CLUSTER=1 keeps it running so the next
session starts in a second or two. The Kubernetes API is never mocked in integration tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import binaries
from devcluster.controlplane import LocalCluster

# A tiny random Llama (seeded, so always the same files): the model the cluster tests build for real.
TINY_CHECKPOINT = binaries.cache_root() / "checkpoints" / "tiny-llama-test"

# Another name (BATCHLINE_TEST_CLUSTER) keeps concurrent sessions on one machine apart.
TEST_CLUSTER = os.environ.get("BATCHLINE_TEST_CLUSTER", "pytest")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the control-plane binaries (once, ~10 min cold) before any cluster test runs,
    so the build is not charged to one test's timeout and its progress shows in the log."""
    if not any(item.get_closest_marker("cluster") for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        binaries.ensure_binaries()


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(TEST_CLUSTER)
    keep = os.environ.get("BATCHLINE_KEEP_CLUSTER") == "1"
    if not keep:
        local.down()  # a cluster left by an interrupted run may hold objects that skew this one
    local.up()
    yield local
    if not keep:
        local.down()


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    if not (TINY_CHECKPOINT / "config.json").is_file():
        from model_repo_builder.testing import make_tiny_checkpoint

        staging = TINY_CHECKPOINT.with_name(f"{TINY_CHECKPOINT.name}.{os.getpid()}")
        make_tiny_checkpoint(staging, "llama")
        staging.rename(TINY_CHECKPOINT)
    return TINY_CHECKPOINT
