"""Writes a model's weights into a repository folder, in the form runtime.load_model reads back.

Float modes are a plain Hugging Face folder (safetensors), which vLLM can read too. The packed
modes (int8/int4 weight-only) save with torch.save the float tensors and, for each packed module,
`<module>.packed.{codes,scale,offset}`; the manifest's `packed` holds each one's layout. torchao
modes save the state dict: the torchao tensor subclasses (Int8Tensor) keep their quantized data, and
torch.load(weights_only=True) rebuilds them. All writers are deterministic, so the same build gives
byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .quantize import QuantizationSummary
from .runtime import MANIFEST_FILE, PACKED_FORMAT, STATE_FILE


def save_weights(model: Any, tokenizer: Any, out_dir: Path, kind: str, mode: str, summary: QuantizationSummary) -> None:
    out_dir.mkdir(parents=True)
    quantized = bool(summary.layers)
    extra: dict[str, Any] = {}
    if summary.packed:
        model.config.save_pretrained(out_dir)
        torch.save(_packed_state(model, summary), out_dir / STATE_FILE)
        extra["packed"] = {name: weight.spec() for name, weight in summary.packed.items()}
    elif quantized:
        model.config.save_pretrained(out_dir)
        torch.save(model.state_dict(), out_dir / STATE_FILE)
    else:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    manifest = {
        "format": PACKED_FORMAT if summary.packed else "torch-state-dict" if quantized else "safetensors",
        "kind": kind,
        "mode": mode,
        **summary.to_dict(),
        **extra,
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _packed_state(model: Any, summary: QuantizationSummary) -> dict[str, torch.Tensor]:
    """The float tensors that stay float, then each packed module's codes, scales and offsets."""
    replaced = {f"{name}.weight" for name in summary.packed}
    if summary.tied_embedding:
        head = model.get_output_embeddings()
        replaced |= {f"{name}.weight" for name, module in model.named_modules() if module is head}
    state = {key: value for key, value in model.state_dict().items() if key not in replaced}
    for name, weight in summary.packed.items():
        state |= {f"{name}.packed.{key}": value for key, value in weight.state_dict().items()}
    return state


def weight_bytes(weights_dir: Path) -> int:
    """Bytes of the stored tensors (state file or safetensors), without config and tokenizer."""
    files = [weights_dir / STATE_FILE, *weights_dir.glob("*.safetensors")]
    return sum(file.stat().st_size for file in files if file.is_file())
