"""Loads a built model and runs one batch: the code that Triton's model.py and the builder share.

The builder copies this file into every repository as `batchline_runtime.py`, so a served model
needs torch, transformers, compressed-tensors (int8/int4 weight-only builds) and torchao (int8-dynamic,
fp8) but not this package. It must import nothing from it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.pytorch_utils import Conv1D

MANIFEST_FILE = "batchline-weights.json"
STATE_FILE = "quantized_state.pt"
# Manifest `format` of int8/int4 weight-only builds: a Hugging Face folder whose config.json carries a
# compressed-tensors `quantization_config` (pack-quantized weights), as vLLM and transformers read it.
COMPRESSED_FORMAT = "compressed-tensors"
CAUSAL_LM = "causal-lm"
EMBEDDING = "embedding"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    kind: str
    manifest: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def output_head(model: Any) -> torch.nn.Module | None:
    """The model's LM head, or None (encoders have none)."""
    get_output = getattr(model, "get_output_embeddings", None)
    head: torch.nn.Module | None = get_output() if get_output else None
    return head


def conv1d_to_linear(model: torch.nn.Module) -> int:
    """Replaces GPT-2 style Conv1D layers (weight stored as in x out) by equivalent nn.Linear.

    torchao quantizes nn.Linear only; the model's forward calls the layer the same way.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                in_features, out_features = child.weight.shape
                linear = torch.nn.Linear(in_features, out_features, dtype=child.weight.dtype)
                linear.weight = torch.nn.Parameter(child.weight.detach().t().contiguous())
                linear.bias = torch.nn.Parameter(child.bias.detach())
                setattr(parent, name, linear)
                replaced += 1
    return replaced


def load_instance(args: dict[str, str], model_dir: str | Path) -> tuple[LoadedModel, dict[str, str]]:
    """What both Triton models do in `initialize`: read the model's config parameters, set torch's threads,
    and load the weights on the device Triton gave this instance (its GPU, else the CPU). Returns the
    model and the parameters."""
    config = json.loads(args["model_config"])
    params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    threads = int(params.get("torch_threads", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
    return load_model(Path(model_dir) / params.get("weights", "weights"), device), params


def load_model(weights_dir: str | Path, device: str = "cpu") -> LoadedModel:
    """Rebuilds the model a build saved, quantized tensors included, from its manifest.

    int8/int4 weight-only builds (compressed-tensors) are de-quantized once at load into float32 layers,
    through transformers' compressed-tensors support: float32 memory and speed on CPU, the same numbers
    the build measured.
    """
    weights_dir = Path(weights_dir)
    manifest = json.loads((weights_dir / MANIFEST_FILE).read_text())
    kind = manifest["kind"]
    dtype = getattr(torch, manifest["dtype"])
    auto = AutoModelForCausalLM if kind == CAUSAL_LM else AutoModel
    model: Any
    if manifest["format"] == "safetensors":
        model = auto.from_pretrained(weights_dir, dtype=dtype)
    elif manifest["format"] == COMPRESSED_FORMAT:
        model = _load_compressed(auto, weights_dir, dtype, manifest["conv1d_to_linear"])
    else:
        # Importing the prototype int4 module registers Int4OpaqueTensor as safe for weights_only loads.
        import torchao.prototype.quantization.int4  # noqa: F401

        model = auto.from_config(AutoConfig.from_pretrained(weights_dir), dtype=dtype)
        if manifest["conv1d_to_linear"]:
            conv1d_to_linear(model)
        state = torch.load(weights_dir / STATE_FILE, weights_only=True, mmap=True)
        # assign=True keeps the torchao tensor subclasses (copying into float parameters would not).
        model.load_state_dict(state, assign=True, strict=True)
        if manifest["tied_embedding"]:
            model.get_input_embeddings().weight = model.get_output_embeddings().weight
    model = model.to(device).eval()
    return prepare(model, AutoTokenizer.from_pretrained(weights_dir), kind, manifest)


def _load_compressed(auto: Any, weights_dir: Path, dtype: torch.dtype, conv1d: bool) -> Any:
    """A compressed-tensors folder, de-quantized at load.

    transformers reads it with CompressedTensorsConfig(dequantize=True). GPT-2 style models, whose
    transformers modules are Conv1D layers (weights stored in x out) that compressed-tensors does not
    quantize, were written with nn.Linear layers: they are rebuilt that way and de-quantized by
    compressed-tensors itself, the same code transformers runs.
    """
    from transformers import CompressedTensorsConfig

    if not conv1d:
        with warnings.catch_warnings():
            # "You passed `quantization_config` ...": only its `dequantize` is taken, as intended.
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            config = CompressedTensorsConfig(dequantize=True)
            return auto.from_pretrained(weights_dir, dtype=dtype, quantization_config=config)
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from safetensors.torch import load_file

    config = AutoConfig.from_pretrained(weights_dir)
    quantization = QuantizationConfig.model_validate(config.quantization_config)
    model = auto.from_config(config, dtype=dtype)
    conv1d_to_linear(model)
    apply_quantization_config(model, quantization)
    compressor = ModelCompressor(quantization_config=quantization)
    compressor.compress_model(model)  # gives each quantized layer its weight_packed / weight_scale slots
    state: dict[str, torch.Tensor] = {}
    for file in sorted(weights_dir.glob("*.safetensors")):
        state |= load_file(file)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    head = output_head(model)
    tied = {f"{name}.weight" for name, module in model.named_modules() if module is head}
    tied = tied if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{weights_dir} does not match the model: missing {sorted(missing)}, unexpected {unexpected}")
    compressor.decompress_model(model)
    model.tie_weights()
    return model.to(dtype)


def prepare(model: Any, tokenizer: Any, kind: str, manifest: dict[str, Any]) -> LoadedModel:
    """Sets up padding (left, for generation) and clears the checkpoint's sampling defaults."""
    if kind == CAUSAL_LM:
        # Requests carry their own sampling settings; generation_config.json must not add to them.
        model.generation_config = GenerationConfig()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, kind, manifest)


class _RowSampling(LogitsProcessor):
    """Per-row temperature and top-p, so one generate call serves requests with different settings.

    A row with temperature 0 keeps only its arg-max token, which sampling then picks for sure.
    """

    def __init__(self, temperature: torch.Tensor, top_p: torch.Tensor) -> None:
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        greedy = self.temperature <= 0
        scaled = scores / torch.where(greedy, 1.0, self.temperature)[:, None]
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = (probs.cumsum(dim=-1) - probs) > self.top_p[:, None]
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        nucleus = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
        best = torch.full_like(scores, float("-inf")).scatter(-1, scores.argmax(-1, keepdim=True), 0.0)
        return cast(torch.FloatTensor, torch.where(greedy[:, None], best, nucleus))


class _RowStop(StoppingCriteria):
    """Ends each row on its own token budget or stop strings; EOS is handled by generate itself."""

    def __init__(self, tokenizer: Any, prompt_length: int, max_tokens: Sequence[int], stops: Sequence[Sequence[str]]):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.max_tokens = max_tokens
        self.stops = stops

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length :]
        done = []
        for row, tokens in enumerate(generated):
            finished = len(tokens) >= self.max_tokens[row]
            if not finished and self.stops[row]:
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                finished = any(stop in text for stop in self.stops[row])
            done.append(finished)
        return cast(torch.BoolTensor, torch.tensor(done, dtype=torch.bool, device=input_ids.device))


def generate(
    loaded: LoadedModel,
    prompts: Sequence[str],
    max_tokens: Sequence[int],
    temperature: Sequence[float],
    top_p: Sequence[float],
    stops: Sequence[Sequence[str]],
) -> list[str]:
    """Completes all prompts in one left-padded generate call and returns only the new text.

    Each completion ends at EOS, at its own `max_tokens`, or just before its first stop string.
    """
    tokenizer, device = loaded.tokenizer, loaded.device
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
    prompt_length = batch["input_ids"].shape[1]
    temperatures = torch.tensor(temperature, dtype=torch.float32, device=device)
    do_sample = bool((temperatures > 0).any())
    config = GenerationConfig(
        max_new_tokens=max(max_tokens),
        do_sample=do_sample,
        temperature=1.0,
        # top_k 0 turns off transformers' default top-k 50; greedy decoding has no top-k to turn off.
        top_k=0 if do_sample else None,
        top_p=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.inference_mode():
        output = loaded.model.generate(
            **batch,
            generation_config=config,
            logits_processor=LogitsProcessorList(
                [_RowSampling(temperatures, torch.tensor(top_p, dtype=torch.float32, device=device))]
            ),
            stopping_criteria=StoppingCriteriaList([_RowStop(tokenizer, prompt_length, max_tokens, stops)]),
        )
    return [
        _completion(tokenizer, tokens[prompt_length:].tolist(), max_tokens[row], stops[row])
        for row, tokens in enumerate(output)
    ]


def _completion(tokenizer: Any, tokens: list[int], limit: int, stops: Sequence[str]) -> str:
    tokens = tokens[:limit]
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    text: str = tokenizer.decode(tokens, skip_special_tokens=True)
    cuts = [text.find(stop) for stop in stops if stop and stop in text]
    return text[: min(cuts)] if cuts else text


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers style: mean over real tokens, then L2-normalized."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def embed(loaded: LoadedModel, texts: Sequence[str]) -> np.ndarray:
    """Embeds all texts in one padded forward pass."""
    batch = loaded.tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True).to(loaded.device)
    with torch.inference_mode():
        hidden = loaded.model(**batch).last_hidden_state
    return mean_pool(hidden, batch["attention_mask"]).cpu().numpy()
