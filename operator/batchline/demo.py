"""The README's main job on the local embedded default: control plane, operator, an LLMDeployment."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from batchline.local.controlplane import LocalCluster
from batchline.local.operator_process import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "smollm2-int8.yaml"


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def kubectl(kubeconfig: Path, *args: str) -> str:
    out = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def wait_ready(kubeconfig: Path, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        row = kubectl(kubeconfig, "get", "llmd", name, "--no-headers")
        if row != last:
            print("   ", row.strip(), flush=True)
            last = row
        ready = kubectl(
            kubeconfig, "get", "llmd", name, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
        )
        if ready == "True":
            return
        time.sleep(2)
    raise TimeoutError(f"{name} not Ready after {timeout:.0f}s")


def run(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.name)
    step("local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK GPU nodes)")
    kubeconfig = cluster.up()
    step("LLMDeployment CRD")
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds" / "llmdeployment.yaml"))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/llmdeployments.batchline.dev")
    step("operator")
    operator = OperatorProcess(
        Path(cluster.operator_kubeconfig),
        cluster.state_dir / "operator.log",
        env={"BATCHLINE_MODEL_CACHE_HOST_PATH": str(cluster.state_dir / "model-cache")},
    )
    operator.start()
    try:
        operator.wait_for_log("Activity 'startup' succeeded", timeout=120)
        step(f"kubectl apply -f {EXAMPLE.relative_to(REPO)}")
        print(kubectl(kubeconfig, "apply", "-f", str(EXAMPLE)).strip())
        wait_ready(kubeconfig, "smollm2", timeout=300)
        step("kubectl get llmd -o wide")
        print(kubectl(kubeconfig, "get", "llmd", "-o", "wide"))
        print(kubectl(kubeconfig, "get", "pods", "-o", "wide", "-l", "batchline.dev/llmdeployment=smollm2"))
        print(
            kubectl(
                kubeconfig,
                "get",
                "llmd",
                "smollm2",
                "-o",
                r'jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}',
            )
        )
    finally:
        operator.stop()
    step("done")
    print(
        f"The cluster is still up: export KUBECONFIG={kubeconfig}\n"
        f"Stop it with: batchline local down --name {args.name}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="demo", help="local cluster name")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
