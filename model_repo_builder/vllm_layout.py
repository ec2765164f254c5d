"""The GPU-only vLLM backend layout: config.pbtxt plus 1/model.json (vLLM's engine arguments).

vLLM does its own in-flight batching, so Triton's batching is off (max_batch_size 0) and the model is
decoupled, as the vllm_backend requires. For fp8, the weights are stored in bf16 and model.json asks
vLLM for `"quantization": "fp8"`, which quantizes them on the GPU at load (compute capability >= 8.9).
int8/int4 weight-only builds are compressed-tensors folders (config.json's `quantization_config`), which
vLLM reads itself (WNA16: Marlin kernels where the layer widths allow, else its other integer kernels);
model.json names no quantization for them, and its dtype is the stored float16/bfloat16 (vLLM's
integer kernels do not run in float32). This layout cannot be served on CPU. Several GPUs per pod run
one engine that splits the model over them (`tensor_parallel_size`), so a model larger than one GPU
fits; vLLM needs the attention heads divisible by it, which `check_tensor_parallel` checks before the
build does any work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UnsupportedModeError
from .options import PACKED_MODES, Backend, BuildOptions, Mode
from .triton_config import ModelConfig, render_config

# vLLM's dtype per float mode (the stored weights' dtype; fp8 is quantized from bf16 at load)
VLLM_DTYPES = {Mode.NONE: "float32", Mode.FP16: "float16", Mode.BF16: "bfloat16", Mode.FP8: "bfloat16"}


def vllm_engine_args(
    options: BuildOptions, checkpoint_dtype: str = "float32", stored_dtype: str | None = None
) -> dict[str, Any]:
    """model.json: the model path is where the serving container mounts the repository; none serves the
    checkpoint's dtype, fp32 float32; the integer modes the dtype their scales and float tensors are
    stored in (`stored_dtype`, config.json's `dtype`)."""
    if options.mode in PACKED_MODES:
        dtype = stored_dtype or "float16"
    else:
        dtype = VLLM_DTYPES[options.float_mode(checkpoint_dtype)]
    args: dict[str, Any] = {
        "model": f"{options.vllm_model_root.rstrip('/')}/{options.model_name}/1/weights",
        "dtype": dtype,
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": options.tensor_parallel_size,
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


def check_vllm_quantization(options: BuildOptions) -> None:
    """Refuses an int4 group size vLLM's integer (Marlin) kernels do not take, before the build does any work."""
    if options.backend is Backend.VLLM and options.mode is Mode.INT4_WEIGHT_ONLY and options.group_size > 128:
        raise UnsupportedModeError(
            f"vLLM's integer kernels take groups of 32, 64 or 128 weights; --group-size {options.group_size} "
            "is for the python backend"
        )


def check_tensor_parallel(options: BuildOptions, config: dict[str, Any]) -> None:
    """Refuses a tensor parallel size that vLLM cannot split this model's attention over: it must divide
    the attention heads, and divide or be a multiple of the key/value heads (vLLM replicates them)."""
    size = options.tensor_parallel_size
    if size == 1:
        return
    text = config.get("text_config") or config
    heads = int(text.get("num_attention_heads") or text.get("n_head") or 0)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    if heads and (heads % size or (kv_heads % size and size % kv_heads)):  # no head count: vLLM decides
        raise UnsupportedModeError(
            f"tensor parallel size {size} (GPUs per replica) cannot split this model: vLLM needs it to divide "
            f"the {heads} attention heads and divide or be a multiple of the {kv_heads} key/value heads; use "
            "a GPU count that does"
        )


def write_vllm_model(model_dir: Path, options: BuildOptions, checkpoint_dtype: str = "float32") -> None:
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(render_config(vllm_model_config(options)))
    stored_dtype = None
    if options.mode in PACKED_MODES:  # the dtype the builder stored the scales and float tensors in
        stored_dtype = json.loads((model_dir / "1" / "weights" / "config.json").read_text()).get("dtype")
    engine = vllm_engine_args(options, checkpoint_dtype, stored_dtype)
    (model_dir / "1" / "model.json").write_text(json.dumps(engine, indent=2, sort_keys=True) + "\n")
