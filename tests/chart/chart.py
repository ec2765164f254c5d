"""Test helpers for the Helm chart: render it with the cached helm binary and pick objects out."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.binaries import KUBE_VERSION
from devcluster.helm import ensure_helm

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "batchline"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# The default values and every ci/*-values.yaml, as pytest parameters.
VALUE_SETS = [pytest.param((), id="default"), *(pytest.param((v,), id=v.stem) for v in CI_VALUES)]
Manifest = dict[str, Any]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True, check=check, timeout=120)


def value_args(values: Sequence[Path] = (), sets: Sequence[str] = ()) -> list[str]:
    return [*(f"--values={v}" for v in values), *(f"--set={s}" for s in sets)]


@cache
def _render(values: tuple[Path, ...], sets: tuple[str, ...], namespace: str, release: str) -> str:
    return helm("template", release, str(CHART), f"--namespace={namespace}", f"--kube-version={KUBE_VERSION}",
                *value_args(values, sets)).stdout


def render(values: Sequence[Path] = (), sets: Sequence[str] = (), namespace: str = "batchline",
           release: str = "bl") -> list[Manifest]:
    """The chart's templates (not crds/) as objects, the way `helm install` would apply them."""
    text = _render(tuple(values), tuple(sets), namespace, release)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: Iterable[Manifest], kind: str) -> Manifest:
    [found] = of_kind(manifests, kind)
    return found


def container(manifests: Iterable[Manifest]) -> dict[str, Any]:
    [c] = one(manifests, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env(manifests: Iterable[Manifest]) -> dict[str, Any]:
    """The operator container's env: name -> value, or the valueFrom dict."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifests)["env"]}


def crds_in_chart() -> list[Manifest]:
    return [doc for f in sorted((CHART / "crds").glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text()) if doc]
