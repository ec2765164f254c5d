"""Writes a model's weights into a repository folder, in the form runtime.load_model reads back.

Float modes are a plain Hugging Face folder (safetensors), which vLLM can read too. The integer
weight-only modes (int8/int4) are a Hugging Face folder in compressed-tensors' `pack-quantized` format
(config.json's `quantization_config`; per quantized layer `weight_packed` int32, `weight_scale`,
`weight_shape`), written with compressed-tensors' own compressor, which vLLM, SGLang and transformers
load. torchao modes save the state dict: the torchao tensor subclasses (Int8Tensor) keep their quantized data, and
torch.load(weights_only=True) rebuilds them. All writers are deterministic, so the same build gives
byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .quantize import IntWeight, QuantizationSummary, quantization_args
from .runtime import COMPRESSED_FORMAT, MANIFEST_FILE, STATE_FILE


def save_weights(model: Any, tokenizer: Any, out_dir: Path, kind: str, mode: str, summary: QuantizationSummary) -> None:
    out_dir.mkdir(parents=True)
    quantized = bool(summary.layers)
    if summary.compressed:
        _save_compressed(model, summary.compressed, out_dir)
    elif quantized:
        model.config.save_pretrained(out_dir)
        torch.save(model.state_dict(), out_dir / STATE_FILE)
    else:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    manifest = {
        "format": COMPRESSED_FORMAT if summary.compressed else "torch-state-dict" if quantized else "safetensors",
        "kind": kind,
        "mode": mode,
        **summary.to_dict(),
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _save_compressed(model: Any, compressed: dict[str, IntWeight], out_dir: Path) -> None:
    """Attaches compressed-tensors' scheme to the quantized layers (the rest listed in `ignore`), sets their
    scales to the builder's, lets compressed-tensors pack them, and saves. The model is consumed."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, apply_quantization_config

    first = next(iter(compressed.values()))
    dtype = first.scale.dtype
    args = quantization_args(first.bits, first.group_size, first.zero_point is None)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    ignore = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in compressed]
    model.to(dtype)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=ignore))
    with torch.no_grad():
        for name, weight in compressed.items():
            module = model.get_submodule(name)
            module.weight.data = weight.dequantize().to(dtype)
            module.weight_scale.data = weight.scale.clone()
            if weight.zero_point is not None:
                module.weight_zero_point.data = weight.zero_point.clone()
    compressor = ModelCompressor.from_pretrained_model(model, "pack-quantized")
    compressor.compress_model(model)
    for name, weight in compressed.items():
        module = model.get_submodule(name)
        codes = unpack_from_int32(module.weight_packed, weight.bits, module.weight_shape)
        if not (torch.equal(codes.to(torch.int8), weight.codes) and torch.equal(module.weight_scale, weight.scale)):
            raise RuntimeError(f"compressed-tensors packed {name} differently from the quantizer's codes")
    model.save_pretrained(out_dir)
    compressor.update_config(str(out_dir))


def weight_bytes(weights_dir: Path) -> int:
    """Bytes of the stored tensors (state file or safetensors), without config and tokenizer."""
    files = [weights_dir / STATE_FILE, *weights_dir.glob("*.safetensors")]
    return sum(file.stat().st_size for file in files if file.is_file())
