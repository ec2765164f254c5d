"""`batchline build`: a checkpoint into a quantized Triton model repository."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import termination
from .cache import link_alias
from .errors import BuildError
from .options import (
    DEFAULT_THRESHOLDS,
    Backend,
    BatchingOptions,
    BuildOptions,
    Engine,
    InstanceKind,
    Mode,
)

# What earlier builds left in an operator's cache folder, removed before each operator build (--alias):
# hf:// downloads, from when HF_HOME was <cache>/.huggingface (now an emptyDir of the build pod), and the
# staging folders of builds killed outright (OOMKilled, a deadline: SIGKILL leaves no chance to clean).
LEGACY_HF_HOME = ".huggingface"
STAGING = re.compile(r"\.[0-9a-f]{24}-[^/]+")  # builder.build's tempfile.mkdtemp(prefix=".<content key>-")
STALE_STAGING_SECONDS = 24 * 3600  # far past the operator's build deadline (4 h by default)


def remove_leftovers(root: Path, now: float | None = None) -> list[str]:
    """Removes the legacy download cache and stale staging folders from `root`; returns their names."""
    if not root.is_dir():
        return []
    removed = []
    legacy = root / LEGACY_HF_HOME
    hf_home = os.environ.get("HF_HOME")
    if legacy.is_dir() and not (hf_home and Path(hf_home).resolve().is_relative_to(legacy.resolve())):
        shutil.rmtree(legacy, ignore_errors=True)
        removed.append(LEGACY_HF_HOME)
    cutoff = (time.time() if now is None else now) - STALE_STAGING_SECONDS
    for folder in sorted(root.iterdir()):
        stale = folder.is_dir() and not folder.is_symlink() and folder.stat().st_mtime < cutoff
        if STAGING.fullmatch(folder.name) and stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "build",
        help="build a quantized Triton model repository from a Hugging Face checkpoint",
        description="Writes OUTPUT_ROOT/<key>/{repository/, build-report.json}; an existing key is reused.",
    )
    parser.add_argument(
        "source", help="checkpoint folder, or hf://org/name@revision (honours HF_TOKEN and HF_HUB_OFFLINE)"
    )
    parser.add_argument("output_root", help="folder that holds one sub-folder per build key")
    parser.add_argument(
        "--mode",
        choices=[str(m) for m in Mode],
        default=str(Mode.NONE),
        help="none keeps the checkpoint's dtype for GPUs (vllm, KIND_GPU) and serves float32 on KIND_CPU; "
        "fp32 is float32 everywhere",
    )
    parser.add_argument("--backend", choices=[str(b) for b in Backend], default=str(Backend.PYTHON))
    parser.add_argument("--model-name", default="model")
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size (32, 64, 128, 256)")
    parser.add_argument(
        "--sparsity",
        type=float,
        default=0.0,
        help="fraction in [0, 1) of each body Linear row's weights to zero (smallest first) before quantizing; "
        "the repository stays dense",
    )
    parser.add_argument("--alias", help="also name the build OUTPUT_ROOT/ALIAS (a symlink; the operator's build key)")
    parser.add_argument(
        "--termination-log", help="write a JSON summary, or the error, here (a Kubernetes termination message)"
    )
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-batch-size", type=int, default=8)
    batching.add_argument("--no-dynamic-batching", action="store_true")
    batching.add_argument("--max-queue-delay-us", type=int, default=5000)
    batching.add_argument("--preferred-batch-size", type=int, action="append", default=[])
    batching.add_argument("--max-queue-size", type=int, default=0, help="0 = unbounded")
    batching.add_argument("--queue-timeout-us", type=int, default=0, help="0 = no timeout")
    serving = parser.add_argument_group("serving")
    serving.add_argument("--instance-kind", choices=[str(k) for k in InstanceKind], default=str(InstanceKind.CPU))
    serving.add_argument("--instance-count", type=int, default=1)
    serving.add_argument("--default-max-tokens", type=int, default=64)
    serving.add_argument("--torch-threads", type=int, default=0, help="0 = torch's default")
    serving.add_argument("--response-cache", action="store_true")
    serving.add_argument("--no-warmup", action="store_true")
    serving.add_argument(
        "--engine",
        choices=[str(e) for e in Engine],
        default=str(Engine.INFLIGHT),
        help="text generation on the python backend: inflight (continuous batching, streaming; a decoupled "
        "model served by gRPC streaming and HTTP generate/generate_stream) or static (one generate() per "
        "Triton batch; HTTP /infer)",
    )
    serving.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=8192,
        help="inflight: KV cache per model instance, in tokens of all running requests together",
    )
    serving.add_argument(
        "--max-batch-tokens", type=int, default=512, help="inflight: most tokens one engine step processes"
    )
    serving.add_argument("--vllm-model-root", default="/models", help="where the vLLM container mounts the repository")
    serving.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="vllm backend: GPUs per pod that one engine splits the model over (model.json tensor_parallel_size)",
    )
    gate = parser.add_argument_group("quality gate (defaults depend on --mode)")
    gate.add_argument("--max-perplexity-increase", type=float, help="relative, e.g. 0.02 for 2%%")
    gate.add_argument("--min-top1-agreement", type=float)
    gate.add_argument("--min-cosine-similarity", type=float)
    gate.add_argument("--max-logit-error", type=float)
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    mode = Mode(args.mode)
    overrides = {
        "max_perplexity_increase": args.max_perplexity_increase,
        "min_top1_agreement": args.min_top1_agreement,
        "min_cosine_similarity": args.min_cosine_similarity,
        "max_logit_error": args.max_logit_error,
    }
    given = {name: value for name, value in overrides.items() if value is not None}
    quality = dataclasses.replace(DEFAULT_THRESHOLDS[mode], **given) if given else None
    return BuildOptions(
        mode=mode,
        backend=Backend(args.backend),
        model_name=args.model_name,
        group_size=args.group_size,
        batching=BatchingOptions(
            max_batch_size=args.max_batch_size,
            dynamic_batching=not args.no_dynamic_batching,
            max_queue_delay_microseconds=args.max_queue_delay_us,
            preferred_batch_sizes=tuple(args.preferred_batch_size),
            max_queue_size=args.max_queue_size,
            default_timeout_microseconds=args.queue_timeout_us,
        ),
        instance_kind=InstanceKind(args.instance_kind),
        instance_count=args.instance_count,
        default_max_tokens=args.default_max_tokens,
        torch_threads=args.torch_threads,
        response_cache=args.response_cache,
        warmup=not args.no_warmup,
        quality=quality,
        vllm_model_root=args.vllm_model_root,
        sparsity=args.sparsity,
        engine=Engine(args.engine),
        kv_cache_tokens=args.kv_cache_tokens,
        max_batch_tokens=args.max_batch_tokens,
        tensor_parallel_size=args.tensor_parallel_size,
    )


def run(args: argparse.Namespace) -> int:
    from .builder import build

    try:
        options = options_from_args(args)
        if args.alias and (removed := remove_leftovers(Path(args.output_root))):
            print(f"batchline build: removed leftovers of earlier builds: {', '.join(removed)}", file=sys.stderr)
        result = build(args.source, args.output_root, options)
        if args.alias:
            link_alias(Path(args.output_root), args.alias, result.key)
    except (BuildError, ValueError) as exc:
        print(f"batchline build: error: {exc}", file=sys.stderr)
        termination.write(args.termination_log, str(exc))
        return 2
    termination.write(args.termination_log, termination.build_summary(result.report, args.alias, result.reused))
    summary = {
        "key": result.key,
        "path": str(result.path),
        "repository": str(result.repository),
        "reused": result.reused,
        "quality": result.report["quality"],
        "size": result.report["size"],
    }
    print(json.dumps(summary, indent=2))
    return 0
