"""Build the control-plane binaries from Go modules and cache them outside the repo.

kube-apiserver, kube-controller-manager and kube-scheduler come from k8s.io/kubernetes in a
scratch module that replaces each staging module (required at v0.0.0 upstream) with the
matching v0.X.Y release. etcd is built in its own module so it does not bump kube's etcd
client. KWOK installs directly, and its stage definitions are copied next to the binaries
so a cached bin dir is all a run needs. Everything goes through the Go module proxy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

# The proxy this project can reach serves only some patch releases (v1.33.5's staging modules
# are missing); v1.34.4 is one whose staging modules are there. See _staging_version.
KUBE_VERSION = "v1.34.4"
ETCD_VERSION = "v3.5.24"
KWOK_VERSION = "v0.7.0"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
ALL_BINARIES = (*KUBE_COMMANDS, "etcd", "kwok")
KWOK_STAGES = (
    "node/fast/node-initialize",
    "node/heartbeat-with-lease/node-heartbeat-with-lease",
    "pod/fast/pod-ready",
    "pod/fast/pod-complete",
    "pod/fast/pod-delete",
)
HEARTBEAT_S = 30.0


def cache_root() -> Path:
    return Path(os.environ.get("BATCHLINE_CACHE", Path.home() / ".cache" / "batchline"))


def bin_dir() -> Path:
    return cache_root() / f"k8s-{KUBE_VERSION}" / "bin"


def kwok_stages_file() -> Path:
    return bin_dir().parent / "kwok-stages.yaml"


def missing_binaries() -> list[str]:
    return [b for b in ALL_BINARIES if not (bin_dir() / b).exists()]


def _go_env(**extra: str) -> dict[str, str]:
    return os.environ | {"GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-trimpath", **extra}


def _run(cmd: list[str], cwd: Path, step: str, env: dict[str, str] | None = None) -> str:
    """Run a go command, printing the step and, while it runs, the elapsed time every 30 s."""
    print(f"[local] {step}: {' '.join(cmd[:3])} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env or _go_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while True:
        try:
            out, err = proc.communicate(timeout=HEARTBEAT_S)
            break
        except subprocess.TimeoutExpired:
            print(f"[local]   ... {step}: {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{step} failed ({' '.join(cmd)}):\n{err[-4000:]}")
    return out


def _fresh_module(path: Path, name: str) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    _run(["go", "mod", "init", name], path, f"init {name}")


def _download_json(module: str, cwd: Path) -> dict[str, str]:
    return json.loads(_run(["go", "mod", "download", "-json", module], cwd, f"download {module}"))


def _staging_modules(src: Path) -> list[str]:
    gomod = Path(_download_json(f"k8s.io/kubernetes@{KUBE_VERSION}", src)["GoMod"]).read_text()
    return sorted(set(re.findall(r"^\s+(k8s\.io/[\w.\-]+) v0\.0\.0$", gomod, flags=re.M)))


def _staging_version(module: str, src: Path) -> str:
    """The matching v0.X.Y, or the newest v0.X.* the proxy has. For v1.34.4 that is v0.34.13 of
    cli-runtime, code-generator, kube-proxy and sample-apiserver: required upstream, but no
    package of theirs is compiled into the three commands (checked with `go list -deps`)."""
    wanted = "v0." + KUBE_VERSION.removeprefix("v1.")
    versions = _run(["go", "list", "-m", "-versions", module], src, f"versions of {module}").split()[1:]
    if wanted in versions:
        return wanted
    minor = wanted.rsplit(".", 1)[0] + "."
    same_minor = [v for v in versions if v.startswith(minor)]
    if not same_minor:
        raise RuntimeError(f"the Go module proxy has no {minor}* release of {module}")
    return max(same_minor, key=lambda v: int(v.rsplit(".", 1)[1]))


def build_kube(out: Path) -> None:
    src = cache_root() / "src" / "kube"
    _fresh_module(src, "local/kbin")
    for mod in _staging_modules(src):
        version = _staging_version(mod, src)
        _run(["go", "mod", "edit", f"-replace={mod}={mod}@{version}"], src, f"replace {mod}@{version}")
    _run(["go", "get", *(f"k8s.io/kubernetes/cmd/{c}@{KUBE_VERSION}" for c in KUBE_COMMANDS)], src,
         "fetch kubernetes modules (a few hundred MB on first run)")
    minor = KUBE_VERSION.split(".")[1]
    ldflags = " ".join([
        "-s -w",
        *(f"-X {pkg}.gitVersion={KUBE_VERSION} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor}"
          for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")),
        "-X k8s.io/component-base/version.gitTreeState=clean",
    ])
    _run(["go", "build", "-ldflags", ldflags, "-o", str(out) + "/",
          *(f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS)], src,
         "compile kube-apiserver, kube-controller-manager, kube-scheduler (~7 min uncached on 2 cores)")


def build_etcd(out: Path) -> None:
    src = cache_root() / "src" / "etcd"
    _fresh_module(src, "local/etcdbin")
    _run(["go", "get", f"go.etcd.io/etcd/server/v3@{ETCD_VERSION}"], src, "fetch etcd")
    _run(["go", "build", "-ldflags", "-s -w", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"],
         src, "compile etcd")


def build_kwok(out: Path) -> None:
    _run(["go", "install", "-ldflags", "-s -w", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"], cache_root(),
         "compile kwok", env=_go_env(GOBIN=str(out)))


def write_kwok_stages(dest: Path) -> None:
    """Concatenate KWOK's own fast node/pod stages (standalone kwok has none built in)."""
    kwok_dir = Path(_download_json(f"sigs.k8s.io/kwok@{KWOK_VERSION}", cache_root())["Dir"])
    docs = [(kwok_dir / "kustomize" / "stage" / f"{stage}.yaml").read_text() for stage in KWOK_STAGES]
    dest.write_text("---\n".join(docs))


def ensure_binaries() -> Path:
    """Build whatever is missing; a warm cache makes this a no-op."""
    out = bin_dir()
    out.mkdir(parents=True, exist_ok=True)
    missing = missing_binaries()
    if "etcd" in missing:
        build_etcd(out)
    if "kwok" in missing:
        build_kwok(out)
    if not kwok_stages_file().exists():
        write_kwok_stages(kwok_stages_file())
    if any(c in missing for c in KUBE_COMMANDS):
        build_kube(out)
    return out


if __name__ == "__main__":
    print(ensure_binaries())
