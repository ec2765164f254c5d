"""Quantizes a loaded model for one build mode.

- int8-weight-only and int4-weight-only use the builder's own packed layout (`runtime.PackedWeight`:
  integer codes + per-row or per-group scales), written by hand because torchao 0.18 cannot store
  what these modes need on CPU: its int4 CPU layout (`Int4OpaqueTensor`) has no embedding lookup and
  keeps float32 scales and zero points, and its int8 layout keeps float32 scales per group.
  * int8: body Linear layers per-row asymmetric (float32 scale and offset per row, 256 levels over
    the row's [min, max]); embeddings and the LM head, whose errors go straight into the logits,
    in groups of 32 with float16 scales (llama.cpp's Q8_0 layout).
  * int4: every Linear layer, the embeddings and a tied LM head in groups of `group_size`, asymmetric
    (float16 scale and offset per group, llama.cpp's Q4_1 layout), the range of each group clipped
    where that lowers its squared error (a small search). Layers whose width is not a multiple of
    the group size fall back to int8.
  * Pruned layers (`sparsity` > 0) use symmetric codes instead, so that a pruned weight stays
    exactly zero.
  A tied LM head is stored once, as the input embedding.
- int8-dynamic: torchao `Int8DynamicActivationInt8WeightConfig` (per-token int8 activations);
  embeddings and a tied head per-row int8 (`Int8WeightOnlyConfig`).
- fp8: torchao `Float8DynamicActivationFloat8WeightConfig`, which needs CUDA compute capability >= 8.9.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from .errors import UnsupportedModeError
from .options import PACKED_MODES, Backend, Mode
from .runtime import PackedWeight, conv1d_to_linear, output_head

FLOAT_DTYPES = {Mode.NONE: torch.float32, Mode.FP16: torch.float16, Mode.BF16: torch.bfloat16}
VLLM_MODES = (Mode.NONE, Mode.FP16, Mode.BF16, Mode.FP8)
# Group size of int8 embeddings and LM heads (the Q8_0 layout).
INT8_TABLE_GROUP = 32
# Largest weight magnitude whose group scales are stored as float16 (float32 above it).
FLOAT16_SAFE = 1e4
# int4 range search: fractions of a group's range clipped from below and from above (every pair),
# then rounds of weighted least-squares refinement.
CLIP_STEPS = (0.0, 0.04, 0.08, 0.12)
LS_ROUNDS = 4
# Rows quantized at once (bounds the temporary memory of the int4 range search).
ROW_CHUNK = 4096


@dataclass(frozen=True)
class QuantizationSummary:
    dtype: str
    conv1d_to_linear: bool
    tied_embedding: bool
    # Modules per mode label, e.g. {"int4-weight-only": 211}; `formats` says the same per layout.
    layers: dict[str, int]
    formats: dict[str, int] = field(default_factory=dict)
    # Packed modes: module name -> its packed weight (a tied LM head is stored as the embedding).
    packed: dict[str, PackedWeight] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "conv1d_to_linear": self.conv1d_to_linear,
            "tied_embedding": self.tied_embedding,
            "layers": dict(sorted(self.layers.items())),
            "formats": dict(sorted(self.formats.items())),
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
    importance: dict[str, torch.Tensor] | None = None,
) -> QuantizationSummary:
    """Converts `model` (or, in the packed modes, reads it) and says what was done.

    `layers` counts the modules per format, e.g. {"int4-weight-only": 210, "int8-weight-only": 1}.
    `pruned` (body Linear layers hold pruned zeros) makes the packed modes keep zero exact.
    `importance` (from `column_importance`) weights the int4 range search.
    fp8 expects the model on its CUDA device already.
    """
    if mode in FLOAT_DTYPES:
        dtype = FLOAT_DTYPES[mode]
        model.to(dtype)
        return QuantizationSummary(str(dtype).removeprefix("torch."), False, _is_tied(model), {})
    model.float()
    converted = conv1d_to_linear(model) > 0
    tied = _is_tied(model)
    if mode in PACKED_MODES:
        packed, formats = _quantize_packed(model, mode, group_size, tied, pruned, importance or {})
        labels = Counter(f"int{weight.bits}-weight-only" for weight in packed.values())
        return QuantizationSummary("float32", converted, tied, dict(labels), formats, packed)
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


def column_importance(model: Any, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per Linear (or Conv1D) layer, 1 + the mean square of each input column over `input_ids`,
    relative to its mean over columns: the weight of that column's error in the int4 search.

    Some hidden dimensions carry activations a hundred times larger than the rest (in SmolLM2 8 of
    576 final hidden dimensions hold half the energy), so an error in their weight columns costs
    a hundred times more in the output; the 1 keeps every column counted.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def record(name: str) -> Any:
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sums[name] = sums.get(name, 0) + x.square().sum(0).cpu()
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | Conv1D):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.inference_mode():
            model(input_ids.to(next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    importance = {}
    for name, total in sums.items():
        mean_square = total / counts[name]
        importance[name] = 1 + mean_square / mean_square.mean().clamp(min=1e-12)
    return importance


def _quantize_packed(
    model: Any, mode: Mode, group_size: int, tied: bool, pruned: bool, importance: dict[str, torch.Tensor]
) -> tuple[dict[str, PackedWeight], dict[str, int]]:
    """Packs every Linear and Embedding weight; the model itself is left as it is."""
    head = output_head(model)
    head_name = next((name for name, module in model.named_modules() if module is head), None)
    packed: dict[str, PackedWeight] = {}
    formats: Counter[str] = Counter()
    for name, module in model.named_modules():
        table = isinstance(module, torch.nn.Embedding) or module is head
        if not (table or isinstance(module, torch.nn.Linear)) or (tied and module is head):
            continue
        weight = module.weight.detach().float()
        symmetric = pruned and not table
        cols = weight.shape[1]
        # A tied embedding is also the LM head: its columns matter as much as the head's inputs.
        source = head_name if tied and module is model.get_input_embeddings() and head_name else name
        columns = importance.get(source)
        if mode is Mode.INT4_WEIGHT_ONLY and cols % group_size == 0:
            packed[name], label = pack_int4(weight, group_size, symmetric, columns)
        elif table and cols % INT8_TABLE_GROUP == 0:
            packed[name], label = pack_int8_groups(weight, INT8_TABLE_GROUP)
        else:
            packed[name], label = pack_int8_rows(weight, symmetric)
        formats[label] += 1
    return packed, dict(formats)


def _scale_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float16 if weight.abs().max().item() < FLOAT16_SAFE else torch.float32


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    """A zero scale (an all-zero row or group) becomes 1, so that its codes stay finite (and zero)."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def pack_int8_rows(weight: torch.Tensor, symmetric: bool) -> tuple[PackedWeight, str]:
    """Per-row int8 with float32 scales: asymmetric over [min, max], or symmetric (zero stays exact)."""
    rows, cols = weight.shape
    packed = PackedWeight((rows, cols), 8, cols, "float32", offset=not symmetric)
    if symmetric:
        scale = _nonzero(weight.abs().amax(1, keepdim=True) / 127)
        codes = (weight / scale).round().clamp(-127, 127)
    else:
        low, high = weight.aminmax(dim=1, keepdim=True)
        scale = _nonzero((high - low) / 255)
        offset = low + 128 * scale
        codes = ((weight - offset) / scale).round().clamp(-128, 127)
        assert packed.offset is not None
        packed.offset.copy_(offset)
    packed.codes.copy_(codes.to(torch.int8))
    packed.scale.copy_(scale)
    kind = "symmetric" if symmetric else "asymmetric"
    return packed, f"int8 per-row {kind}, float32 scale" + ("" if symmetric else " and offset")


def pack_int8_groups(weight: torch.Tensor, group_size: int) -> tuple[PackedWeight, str]:
    """Symmetric int8 in groups with float16 scales (llama.cpp's Q8_0 layout for group size 32)."""
    rows, cols = weight.shape
    dtype = _scale_dtype(weight)
    groups = weight.reshape(rows, cols // group_size, group_size)
    scale = _nonzero((groups.abs().amax(-1) / 127).to(dtype))
    codes = (groups / scale.float()[..., None]).round().clamp(-127, 127)
    packed = PackedWeight((rows, cols), 8, group_size, str(dtype).removeprefix("torch."), offset=False)
    packed.codes.copy_(codes.reshape(rows, cols).to(torch.int8))
    packed.scale.copy_(scale)
    return packed, f"int8 group {group_size} symmetric, {packed.spec()['scale_dtype']} scale"


def pack_int4(
    weight: torch.Tensor, group_size: int, symmetric: bool, importance: torch.Tensor | None = None
) -> tuple[PackedWeight, str]:
    """int4 in groups: asymmetric with a searched range, or symmetric (codes 0..15 around 8).

    `importance` (one value per input column) weights the squared error the search minimizes.
    """
    rows, cols = weight.shape
    dtype = _scale_dtype(weight)
    packed = PackedWeight((rows, cols), 4, group_size, str(dtype).removeprefix("torch."), offset=True)
    assert packed.offset is not None
    column_weights = (torch.ones(cols) if importance is None else importance.float()).reshape(-1, group_size)
    for start in range(0, rows, ROW_CHUNK):
        chunk = weight[start : start + ROW_CHUNK].reshape(-1, cols // group_size, group_size)
        if symmetric:
            scale = _nonzero((chunk.abs().amax(-1) / 7).to(dtype))
            # offset -8 * scale is exact in float16, so code 8 is exactly zero.
            offset = -8 * scale
            codes = (chunk / scale.float()[..., None]).round().clamp(-8, 7) + 8
        else:
            codes, scale, offset = _int4_search(chunk, column_weights, dtype)
        codes = codes.reshape(-1, cols).to(torch.uint8)
        packed.codes[start : start + ROW_CHUNK] = codes[:, 0::2] | (codes[:, 1::2] << 4)
        packed.scale[start : start + ROW_CHUNK] = scale
        packed.offset[start : start + ROW_CHUNK] = offset
    kind = "symmetric" if symmetric else "asymmetric"
    return packed, f"int4 group {group_size} {kind}, {packed.spec()['scale_dtype']} scale and offset"


def _int4_fit(
    groups: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """Codes for each group's scale and offset (rounded to `dtype` first), and the weighted squared error."""
    scale = _nonzero(scale.to(dtype))
    offset = offset.to(dtype)
    scale32, offset32 = scale.float()[..., None], offset.float()[..., None]
    codes = ((groups - offset32) / scale32).round().clamp(0, 15)
    error = ((codes * scale32 + offset32 - groups).square() * weights).sum(-1)
    return codes, scale, offset, error


def _int4_search(
    groups: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group, the scale and offset with the least weighted squared error.

    First every clipped range [low + a * width, high - b * width] for a, b in CLIP_STEPS (0 = the
    group's min or max), then LS_ROUNDS of weighted least squares: the best scale and offset for
    the current codes, then the codes for them, kept where the error drops.
    """
    low, high = groups.aminmax(dim=-1)
    width = high - low
    best: tuple[torch.Tensor, ...] | None = None

    def keep(trial: tuple[torch.Tensor, ...]) -> None:
        nonlocal best
        if best is None:
            best = trial
            return
        better = trial[3] < best[3]
        best = (
            torch.where(better[..., None], trial[0], best[0]),
            *(torch.where(better, new, old) for new, old in zip(trial[1:], best[1:], strict=True)),
        )

    for below in CLIP_STEPS:
        for above in CLIP_STEPS:
            trial_low = low + below * width
            keep(_int4_fit(groups, weights, (high - above * width - trial_low) / 15, trial_low, dtype))
    assert best is not None
    total = weights.sum(-1)
    for _ in range(LS_ROUNDS):
        codes = best[0]
        sum_q = (weights * codes).sum(-1)
        sum_qq = (weights * codes * codes).sum(-1)
        sum_w = (weights * groups).sum(-1)
        sum_qw = (weights * codes * groups).sum(-1)
        det = total * sum_qq - sum_q * sum_q
        solvable = det > 0
        scale = torch.where(solvable, (total * sum_qw - sum_q * sum_w) / torch.where(solvable, det, 1.0), 0.0)
        offset = (sum_w - scale * sum_q) / total
        keep(_int4_fit(groups, weights, scale, offset, dtype))
    return best[0], best[1], best[2]


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
