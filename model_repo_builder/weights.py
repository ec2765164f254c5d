"""Writes a model's weights into a repository folder, in the form runtime.load_model reads back.

Float modes are a plain Hugging Face folder (safetensors), which vLLM can read too. torchao modes
are the state dict saved with torch.save: the torchao tensor subclasses (Int8Tensor,
Int4OpaqueTensor) keep their packed data, and torch.load(weights_only=True) rebuilds them. Both
writers are deterministic, so the same build gives byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .quantize import QuantizationSummary
from .runtime import MANIFEST_FILE, STATE_FILE


def save_weights(
    model: Any, tokenizer: Any, out_dir: Path, kind: str, mode: str, summary: QuantizationSummary
) -> None:
    out_dir.mkdir(parents=True)
    quantized = bool(summary.layers)
    if quantized:
        model.config.save_pretrained(out_dir)
        torch.save(model.state_dict(), out_dir / STATE_FILE)
    else:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    manifest = {
        "format": "torch-state-dict" if quantized else "safetensors",
        "kind": kind,
        "mode": mode,
        **summary.to_dict(),
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def weight_bytes(weights_dir: Path) -> int:
    """Bytes of the stored tensors (state file or safetensors), without config and tokenizer."""
    files = [weights_dir / STATE_FILE, *weights_dir.glob("*.safetensors")]
    return sum(file.stat().st_size for file in files if file.is_file())
