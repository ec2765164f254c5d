"""Quantizes a loaded model for one build mode.

- int8-weight-only and int4-weight-only: every Linear layer but the LM head, symmetric integer codes
  with one float16 (bfloat16 for weights beyond float16's range) scale per group of consecutive weights
  in a row: int8 in groups of INT8_GROUP, int4 in groups of `group_size`. Written as a compressed-tensors
  `pack-quantized` Hugging Face folder (weights.py), which vLLM (Marlin kernels), SGLang and
  transformers load. Statistics come from the calibration text (calibration_text.py, disjoint from the
  evaluation text). Both round to nearest, each group's scale (and int4's zero point) from a range
  search weighted by the layer's input energy ("weighted-rtn"), which measured ahead of GPTQ on
  SmolLM2's held-out text (docs/builder.md). Pruned models (`sparsity` > 0) use round to nearest,
  unweighted and symmetric, so that a pruned weight stays exactly zero.
  The embeddings and the LM head stay in float (neither vLLM nor transformers reads them quantized in
  this format); every unquantized float tensor is stored in the same float16/bfloat16.
- int8-dynamic: torchao `Int8DynamicActivationInt8WeightConfig` (per-token int8 activations);
  embeddings and a tied head per-row int8 (`Int8WeightOnlyConfig`).
- fp8: torchao `Float8DynamicActivationFloat8WeightConfig`, which needs CUDA compute capability >= 8.9.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UnsupportedModeError
from .options import PACKED_MODES, Backend, Mode
from .runtime import conv1d_to_linear, output_head

FLOAT_DTYPES = {Mode.NONE: torch.float32, Mode.FP16: torch.float16, Mode.BF16: torch.bfloat16}
VLLM_MODES = (Mode.NONE, Mode.FP16, Mode.BF16, Mode.FP8, Mode.INT8_WEIGHT_ONLY, Mode.INT4_WEIGHT_ONLY)
# Group size of int8-weight-only (vLLM's Marlin kernels take groups of 32, 64 or 128, or per row).
INT8_GROUP = 32
# Largest weight magnitude stored as float16 (bfloat16 above it).
FLOAT16_SAFE = 1e4
# int4 with an integer zero point per group (vLLM reads it: Marlin's uint4 with zero points).
INT4_ASYMMETRIC = True
# The recipe where calibration statistics are available (pruned builds, or none: "rtn").
WEIGHTED_RECIPE = "weighted-rtn"
# Range search of a group's scale (see `_scale_trials`): the full-range scale / (1 - step / 256), steps
# from 5/8 of it (the range clipped) to twice it (half the codes used).
SCALE_TRIAL_STEPS = range(-160, 129, 2)


@dataclass(frozen=True)
class QuantizationSummary:
    dtype: str
    conv1d_to_linear: bool
    tied_embedding: bool
    # Modules per mode label, e.g. {"int4-weight-only": 211}; `formats` says the same per layout.
    layers: dict[str, int]
    formats: dict[str, int] = field(default_factory=dict)
    # Integer modes: the recipe ("weighted-rtn" or "rtn") and each quantized Linear layer's codes and scales.
    recipe: str | None = None
    compressed: dict[str, IntWeight] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "conv1d_to_linear": self.conv1d_to_linear,
            "tied_embedding": self.tied_embedding,
            "layers": dict(sorted(self.layers.items())),
            "formats": dict(sorted(self.formats.items())),
            **({"recipe": self.recipe} if self.recipe else {}),
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


def quantize_model(
    model: Any,
    mode: Mode,
    group_size: int,
    pruned: bool = False,
    hessians: dict[str, torch.Tensor] | None = None,
    converted: bool = False,
) -> QuantizationSummary:
    """Converts `model` and says what was done.

    `layers` counts the modules per format, e.g. {"int4-weight-only": 210}. In the integer weight-only
    modes the model keeps float layers holding the served (de-quantized) weights, and `compressed` the
    codes and scales weights.py writes. `pruned` (body Linear layers hold pruned zeros) keeps zero exact
    (unweighted symmetric round to nearest). `hessians` (from `calibration_hessians`) weight the range
    search by each layer's input energy.
    `converted`: the caller already turned the model's Conv1D layers into nn.Linear.
    fp8 expects the model on its CUDA device already.
    """
    if mode in FLOAT_DTYPES:
        dtype = FLOAT_DTYPES[mode]
        model.to(dtype)
        return QuantizationSummary(str(dtype).removeprefix("torch."), False, _is_tied(model), {})
    model.float()
    converted = conv1d_to_linear(model) > 0 or converted
    tied = _is_tied(model)
    if mode in PACKED_MODES:
        check_integer_layout(model, mode, group_size)
        compressed, formats, recipe = _quantize_integer_weights(model, mode, group_size, pruned, hessians)
        layers = {str(mode): len(compressed)}
        return QuantizationSummary("float32", converted, tied, layers, formats, recipe, compressed)
    layers = _quantize_fp8(model) if mode is Mode.FP8 else _quantize_integer(model, mode, group_size, tied)
    return QuantizationSummary("float32", converted, tied, layers)


def _is_tied(model: Any) -> bool:
    output = output_head(model)
    return output is not None and output.weight is model.get_input_embeddings().weight


def _quantize_integer(model: Any, mode: Mode, group_size: int, tied: bool) -> dict[str, int]:
    """int8-dynamic with torchao: body Linear layers dynamic, embeddings and a tied head int8 per row."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    head = model.get_output_embeddings() if tied else None
    plan = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            if not (tied and module is model.get_input_embeddings()):
                plan[name] = "int8"
        elif isinstance(module, torch.nn.Linear):
            plan[name] = "int8" if module is head else "body"
    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda _, name: plan.get(name) == "body")
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda _, name: plan.get(name) == "int8")
    if tied:
        # The head now holds an int8 tensor; the input embedding looks its rows up in the same one.
        model.get_input_embeddings().weight = model.get_output_embeddings().weight
    labels = {"body": str(mode), "int8": str(Mode.INT8_WEIGHT_ONLY)}
    return dict(Counter(labels[kind] for kind in plan.values()))


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    """A zero scale (an all-zero group) becomes 1, so that its codes stay finite (and zero)."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


@dataclass
class IntWeight:
    """One Linear weight in compressed-tensors' integer layout: `w = (code - zero_point) * scale`, one scale
    (and, asymmetric, one integer zero point) per group of `group_size` consecutive weights of a row;
    codes -2^(bits-1)..2^(bits-1)-1."""

    codes: torch.Tensor  # int8 [rows, cols]
    scale: torch.Tensor  # [rows, cols / group_size], in the stored float dtype
    zero_point: torch.Tensor | None  # int8 [rows, cols / group_size]; None when symmetric
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        """The weight as served: compressed-tensors' own de-quantization (in the scale's dtype), as float32."""
        from compressed_tensors.quantization.lifecycle.forward import dequantize

        args = quantization_args(self.bits, self.group_size, self.zero_point is None)
        return dequantize(self.codes, self.scale, self.zero_point, args).float()


def quantization_args(bits: int, group_size: int, symmetric: bool) -> Any:
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=group_size)


def integer_layout(mode: Mode, group_size: int) -> tuple[int, int]:
    """(bits, group size) of a weight-only integer mode."""
    return (8, INT8_GROUP) if mode is Mode.INT8_WEIGHT_ONLY else (4, group_size)


def storage_dtype(model: Any) -> torch.dtype:
    """The float dtype the compressed folder stores scales and unquantized tensors in: bfloat16 for a model
    with weights beyond float16's range, else float16 (vLLM's Marlin kernels run in either, not float32)."""
    biggest = max((p.detach().abs().max().item() for p in model.parameters() if p.is_floating_point()), default=0.0)
    return torch.float16 if biggest < FLOAT16_SAFE else torch.bfloat16


def quantized_layers(model: Any) -> dict[str, torch.nn.Linear]:
    """The Linear layers the integer modes quantize: all but the LM head (vLLM and transformers keep the
    head and the embeddings in float; a tied head is the embedding)."""
    head = output_head(model)
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }


def check_integer_layout(model: Any, mode: Mode, group_size: int) -> None:
    """Refuses, before any work, a model the integer layout cannot hold."""
    bits, group = integer_layout(mode, group_size)
    layers = quantized_layers(model)
    if not layers:
        raise UnsupportedModeError(f"{mode} quantizes Linear layers and this model has none besides its LM head")
    bad = sorted({(name.rsplit(".", 1)[-1], m.in_features) for name, m in layers.items() if m.in_features % group})
    if bad:
        widths = ", ".join(f"{kind} ({cols} inputs)" for kind, cols in bad[:4])
        raise UnsupportedModeError(
            f"{mode} stores groups of {group} weights per row, which does not divide the input width of {widths}; "
            + ("use a --group-size that divides it (32 divides more widths)" if bits == 4 else "")
        )


def calibration_batches(reference: Any) -> list[torch.Tensor]:
    """The calibration text's token ids (a loaded model's tokenizer), in windows the model's context holds."""
    from .calibration_text import CALIBRATION_TEXT
    from .quality import MAX_EVAL_TOKENS

    context = int(getattr(reference.model.config, "max_position_embeddings", MAX_EVAL_TOKENS))
    size = min(context, MAX_EVAL_TOKENS)
    ids = reference.tokenizer(CALIBRATION_TEXT, return_tensors="pt").input_ids[0]
    return [ids[start : start + size][None] for start in range(0, len(ids), size)]


def calibration_hessians(model: Any, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per quantized Linear layer, E[x x^T] of its inputs over the calibration token ids (float64 sums)."""
    layers = quantized_layers(model)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def record(name: str) -> Any:
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
            x = inputs[0].detach().double().reshape(-1, inputs[0].shape[-1]).cpu()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    for name, module in layers.items():
        hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.inference_mode():
            for ids in batches:
                model(ids.to(next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (total / counts[name]).float() for name, total in sums.items()}


def _scale_trials(groups: torch.Tensor, bits: int, symmetric: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Candidate (scale, zero point) per group of [rows, n, size] weights, scales before rounding.

    The scale that spans a group's range is one candidate among many: finer ones clip the range, and
    coarser ones use only some of the codes, which fits a group whose weights already lie on a coarser
    grid (as in a checkpoint de-quantized from a GGUF file) exactly or nearly. Asymmetric groups also
    try the zero points next to the rounded one. An exhaustive search, as llama.cpp's `make_qx_quants`;
    the error measure is the caller's."""
    low_code, high_code = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if symmetric:
        full = groups.abs().amax(-1) / high_code
        for step in SCALE_TRIAL_STEPS:
            yield full / (1 - step / 256), torch.zeros_like(full)
        return
    low, high = groups.aminmax(dim=-1)
    low, high = low.clamp(max=0), high.clamp(min=0)  # the integer zero point needs 0 in the range
    full = (high - low) / (high_code - low_code)
    for step in SCALE_TRIAL_STEPS:
        scale = _nonzero(full / (1 - step / 256))
        nearest = (low_code - low / scale).round()
        for shift in (-1, 0, 1):
            yield scale, (nearest + shift).clamp(low_code, high_code)


def _group_params(
    groups: torch.Tensor, weights: torch.Tensor, bits: int, symmetric: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of [rows, n, size] weights, the scale (rounded to `dtype`) and integer zero point (0 when
    symmetric) with the least weighted squared error (`weights`: [n, size]) among `_scale_trials`."""
    best: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    for trial_scale, zero in _scale_trials(groups, bits, symmetric):
        # The trial's codes, then the scale that fits them best (weighted least squares), rounded.
        levels = _codes(groups, _nonzero(trial_scale)[..., None], zero[..., None], bits) - zero[..., None]
        fitted = (weights * levels * groups).sum(-1) / (weights * levels.square()).sum(-1).clamp(min=1e-30)
        scale = _nonzero(torch.where(fitted > 0, fitted, trial_scale).to(dtype)).float()
        codes = _codes(groups, scale[..., None], zero[..., None], bits)
        error = (((codes - zero[..., None]) * scale[..., None] - groups).square() * weights).sum(-1)
        if best is None:
            best = (scale, zero, error)
        else:
            better = error < best[2]
            best = (
                torch.where(better, scale, best[0]),
                torch.where(better, zero, best[1]),
                torch.where(better, error, best[2]),
            )
    assert best is not None
    return best[0].to(dtype), best[1]


def input_energy(hessian: torch.Tensor) -> torch.Tensor:
    """Per input column, 1 + its mean square input relative to the mean over columns (H's diagonal): the
    weight of that column's error in the range search. A few hidden dimensions carry activations a
    hundred times larger than the rest (8 of SmolLM2's 576), and errors in their columns cost as much
    more; the 1 keeps every column counted."""
    diag = torch.diag(hessian).float().clamp(min=0)
    return 1 + diag / diag.mean().clamp(min=1e-12)


def _codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """compressed-tensors' rounding: clamp(round(x / scale) + zero_point)."""
    return ((x / scale).round() + zero).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def quantize_rtn(
    weight: torch.Tensor,
    bits: int,
    group_size: int,
    dtype: torch.dtype,
    symmetric: bool = True,
    importance: torch.Tensor | None = None,
) -> IntWeight:
    """Round to nearest with per-group parameters from the range search (weighted by `importance` per
    column). Symmetric codes keep a zero weight (pruned) exactly zero."""
    rows, cols = weight.shape
    groups = weight.float().reshape(rows, cols // group_size, group_size)
    weights = (torch.ones(cols) if importance is None else importance.float()).reshape(-1, group_size)
    scale, zero = _group_params(groups, weights, bits, symmetric, dtype)
    codes = _codes(groups, scale.float()[..., None], zero[..., None], bits)
    return IntWeight(
        codes.reshape(rows, cols).to(torch.int8), scale, None if symmetric else zero.to(torch.int8), bits, group_size
    )


def _quantize_integer_weights(
    model: Any, mode: Mode, group_size: int, pruned: bool, hessians: dict[str, torch.Tensor] | None
) -> tuple[dict[str, IntWeight], dict[str, int], str]:
    """Quantizes every body Linear layer and puts the served (de-quantized) weight in its place; the
    other float tensors are rounded to the stored dtype, so the model in memory is the one served."""
    bits, group = integer_layout(mode, group_size)
    # int4 is asymmetric (an integer zero point per group) unless pruned zeros must stay exact; int8 is
    # symmetric (vLLM's Marlin kernels take no 8-bit zero points).
    symmetric = bits == 8 or pruned or not INT4_ASYMMETRIC
    dtype = storage_dtype(model)
    # Measured on SmolLM2's held-out text (docs/builder.md), the weighted search is ahead of GPTQ in both
    # widths; GPTQ fitted the calibration text far better than text it had not seen.
    recipe = "rtn" if not hessians or pruned else WEIGHTED_RECIPE
    quantized: dict[str, IntWeight] = {}
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype).float()
        for name, module in quantized_layers(model).items():
            if recipe == WEIGHTED_RECIPE and hessians is not None:
                weight = quantize_rtn(module.weight, bits, group, dtype, symmetric, input_energy(hessians[name]))
            else:
                weight = quantize_rtn(module.weight, bits, group, dtype, symmetric)
            module.weight.data = weight.dequantize()
            quantized[name] = weight
    kind = "symmetric" if symmetric else "asymmetric"
    label = f"int{bits} group {group} {kind}, {str(dtype).removeprefix('torch.')} scale ({recipe})"
    return quantized, {label: len(quantized)}, recipe


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
