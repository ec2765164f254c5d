"""Quantizes a loaded model in place with torchao, for one build mode.

Which torchao configuration serves which mode (torchao 0.18, checked on x86 CPU):
- int8-weight-only: `Int8WeightOnlyConfig` (per-row int8 weights, float activations);
- int8-dynamic: `Int8DynamicActivationInt8WeightConfig` (per-token int8 activations);
- int4-weight-only: the prototype `PrototypeInt4WeightOnlyConfig` (`Int4OpaqueTensor`, the CPU int4
  kernel; the stable `Int4WeightOnlyConfig` formats need CUDA);
- fp8: `Float8DynamicActivationFloat8WeightConfig`, which needs CUDA compute capability >= 8.9.
Embedding tables are kept as per-row int8 in the integer modes. A tied LM head stays shared with the
input embedding, as one int8 tensor, so it is stored once (int4 has no embedding lookup, so in int4
mode a tied head is int8 too).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UnsupportedModeError
from .options import Backend, Mode
from .runtime import conv1d_to_linear

FLOAT_DTYPES = {Mode.NONE: torch.float32, Mode.FP16: torch.float16, Mode.BF16: torch.bfloat16}
VLLM_MODES = (Mode.NONE, Mode.FP16, Mode.BF16, Mode.FP8)
# The CPU int4 packing kernel needs the output size to be a multiple of 16.
INT4_OUT_FEATURES_MULTIPLE = 16


@dataclass(frozen=True)
class QuantizationSummary:
    dtype: str
    conv1d_to_linear: bool
    tied_embedding: bool
    layers: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "conv1d_to_linear": self.conv1d_to_linear,
            "tied_embedding": self.tied_embedding,
            "layers": dict(sorted(self.layers.items())),
        }


def fp8_hardware() -> str | None:
    """The CUDA device that can run fp8 matmuls, or None (fp8 needs compute capability >= 8.9)."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name() if (major, minor) >= (8, 9) else None


def check_supported(mode: Mode, backend: Backend) -> None:
    """Refuses, before any work, a mode that the backend or this machine cannot run."""
    if backend is Backend.VLLM and mode not in VLLM_MODES:
        raise UnsupportedModeError(
            f"the vLLM backend takes modes {[str(m) for m in VLLM_MODES]} (vLLM quantizes fp8 itself at "
            f"load); {mode} is served by the python backend"
        )
    if mode is Mode.FP8 and backend is Backend.PYTHON and fp8_hardware() is None:
        found = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
        raise UnsupportedModeError(
            f"fp8 needs an NVIDIA GPU with compute capability >= 8.9 (Ada, Hopper or newer); found {found}. "
            "Use --backend vllm to emit a GPU-only fp8 repository, or int8-weight-only to serve on CPU"
        )


def quantize_model(model: Any, mode: Mode, group_size: int) -> QuantizationSummary:
    """Converts `model` in place and says what was done, for the weights manifest and the report.

    `layers` counts the modules per format, e.g. {"int4-weight-only": 210, "int8-weight-only": 1}.
    fp8 expects the model on its CUDA device already.
    """
    if mode in FLOAT_DTYPES:
        dtype = FLOAT_DTYPES[mode]
        model.to(dtype)
        return QuantizationSummary(str(dtype).removeprefix("torch."), False, _is_tied(model), {})
    model.float()
    converted = conv1d_to_linear(model) > 0
    tied = _is_tied(model)
    layers = _quantize_fp8(model) if mode is Mode.FP8 else _quantize_integer(model, mode, group_size, tied)
    return QuantizationSummary("float32", converted, tied, layers)


def _is_tied(model: Any) -> bool:
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if get_output else None
    return output is not None and output.weight is model.get_input_embeddings().weight


def _integer_plan(model: Any, mode: Mode, group_size: int, tied: bool) -> dict[str, str]:
    """Module name -> "body" (the mode's own config) or "int8" (per-row int8 weight-only)."""
    head = model.get_output_embeddings() if tied else None
    plan = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            if not (tied and module is model.get_input_embeddings()):
                plan[name] = "int8"
        elif isinstance(module, torch.nn.Linear):
            int4_unfit = mode is Mode.INT4_WEIGHT_ONLY and not _int4_fits(module, group_size)
            plan[name] = "int8" if module is head or int4_unfit else "body"
    return plan


def _quantize_integer(model: Any, mode: Mode, group_size: int, tied: bool) -> dict[str, int]:
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    body: Any = {
        Mode.INT8_WEIGHT_ONLY: Int8WeightOnlyConfig(),
        Mode.INT8_DYNAMIC: Int8DynamicActivationInt8WeightConfig(),
        Mode.INT4_WEIGHT_ONLY: PrototypeInt4WeightOnlyConfig(group_size=group_size),
    }[mode]
    plan = _integer_plan(model, mode, group_size, tied)
    quantize_(model, body, filter_fn=lambda _, name: plan.get(name) == "body")
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda _, name: plan.get(name) == "int8")
    if tied:
        # The head now holds an int8 tensor; the input embedding looks its rows up in the same one.
        model.get_input_embeddings().weight = model.get_output_embeddings().weight
    labels = {"body": str(mode), "int8": str(Mode.INT8_WEIGHT_ONLY)}
    return dict(Counter(labels[kind] for kind in plan.values()))


def _int4_fits(linear: torch.nn.Linear, group_size: int) -> bool:
    return linear.in_features % group_size == 0 and linear.out_features % INT4_OUT_FEATURES_MULTIPLE == 0


def _quantize_fp8(model: Any) -> dict[str, int]:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    head = model.get_output_embeddings()
    count = sum(1 for module in model.modules() if _is_body_linear(module, head))
    quantize_(
        model,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        filter_fn=lambda module, _: _is_body_linear(module, head),
    )
    return {str(Mode.FP8): count}


def _is_body_linear(module: torch.nn.Module, head: torch.nn.Module | None) -> bool:
    """fp8 leaves the LM head in high precision, as vLLM does."""
    return isinstance(module, torch.nn.Linear) and module is not head


def fp8_weight_proxy(model: Any) -> None:
    """CPU stand-in for vLLM's fp8, for the quality gate only: fp8 (e4m3, per-row) weights, float math.

    vLLM also quantizes activations to fp8, which no CPU kernel does; the gate therefore sees the
    weight error only.
    """
    from torchao.quantization import Float8WeightOnlyConfig, quantize_

    model.float()
    head = model.get_output_embeddings()
    quantize_(model, Float8WeightOnlyConfig(), filter_fn=lambda module, _: _is_body_linear(module, head))
