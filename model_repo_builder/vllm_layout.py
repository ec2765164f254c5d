"""The GPU-only vLLM backend layout: config.pbtxt plus 1/model.json (vLLM's engine arguments).

vLLM does its own in-flight batching, so Triton's batching is off (max_batch_size 0) and the model is
decoupled, as the vllm_backend requires. For fp8, the weights are stored in bf16 and model.json asks
vLLM for `"quantization": "fp8"`, which quantizes them on the GPU at load (compute capability >= 8.9).
This layout cannot be served on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .options import BuildOptions, Mode
from .triton_config import ModelConfig, render_config

VLLM_DTYPES = {Mode.NONE: "float32", Mode.FP16: "float16", Mode.BF16: "bfloat16", Mode.FP8: "bfloat16"}


def vllm_engine_args(options: BuildOptions) -> dict[str, Any]:
    """model.json: the model path is where the serving container mounts the repository."""
    args: dict[str, Any] = {
        "model": f"{options.vllm_model_root.rstrip('/')}/{options.model_name}/1/weights",
        "dtype": VLLM_DTYPES[options.mode],
        "gpu_memory_utilization": 0.9,
    }
    if options.mode is Mode.FP8:
        args["quantization"] = "fp8"
    return args


def vllm_model_config(options: BuildOptions) -> ModelConfig:
    return ModelConfig(
        name=options.model_name,
        backend="vllm",
        max_batch_size=0,
        instance_kind="KIND_MODEL",
        response_cache=False,
        num_versions=options.num_versions,
        decoupled=True,
    )


def write_vllm_model(model_dir: Path, options: BuildOptions) -> None:
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(render_config(vllm_model_config(options)))
    (model_dir / "1" / "model.json").write_text(json.dumps(vllm_engine_args(options), indent=2, sort_keys=True) + "\n")
