"""Build helm (a few minutes, once per machine) before the first chart test, as tests/conftest.py does
for the control plane, so no single test's timeout pays for the build."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from devcluster.helm import ensure_helm

HERE = Path(__file__).resolve().parent


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any(Path(str(item.path)).is_relative_to(HERE) for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        ensure_helm()
