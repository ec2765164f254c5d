"""Build the helm CLI from the Go module proxy and cache it outside the repo.

Helm v3's go.mod has no replace directives, so a plain `go install` of cmd/helm works; the
version is injected the way helm's Makefile does it, otherwise `helm version` prints only the
minor version hard-coded in the source.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devcluster.binaries import cache_root

HELM_VERSION = "v3.19.0"
HELM_MODULE = "helm.sh/helm/v3"


def helm_path() -> Path:
    return cache_root() / "bin" / f"helm-{HELM_VERSION}"


def ensure_helm() -> Path:
    """Path of a helm binary at HELM_VERSION, built on first use (a few minutes on 2 cores)."""
    target = helm_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".helm.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions must not build it twice at once
        if not target.exists():
            _build(target)
    return target


def _build(target: Path) -> None:
    ldflags = f"-s -w -X {HELM_MODULE}/internal/version.version={HELM_VERSION}"
    print(f"[helm] go install {HELM_MODULE}/cmd/helm@{HELM_VERSION}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as gobin:
        env = os.environ | {"GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOBIN": gobin, "GOFLAGS": "-trimpath"}
        proc = subprocess.run(
            ["go", "install", f"-ldflags={ldflags}", f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"],
            env=env, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"building helm {HELM_VERSION} failed:\n{proc.stderr[-4000:]}")
        # Rename into place so a concurrent reader never sees a half-written binary.
        shutil.move(str(Path(gobin) / "helm"), target)


if __name__ == "__main__":
    print(ensure_helm())
