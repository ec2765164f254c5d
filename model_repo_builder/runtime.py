"""Loads a built model and runs one batch: the code that Triton's model.py and the builder share.

The builder copies this file into every repository as `batchline_runtime.py`, so a served model
needs torch, transformers and torchao but not this package. It must import nothing from it.
"""

from __future__ import annotations

import json
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
# Manifest `format` of the builder's own integer layout (PackedWeight tensors in STATE_FILE).
PACKED_FORMAT = "packed-state-dict"
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


class PackedWeight(torch.nn.Module):
    """A 2-D weight stored as integer codes with per-group scales: `w = code * scale (+ offset)`.

    Codes are int8 (`bits` 8, values -128..127) or two 4-bit codes per uint8 byte (`bits` 4, values
    0..15, low nibble first). `scale` and the optional `offset` hold one value per group of
    `group_size` consecutive weights of a row ([rows, cols / group_size]; a group the size of a row
    is per-row). Dequantizing always computes in float32, so every way of running the weights (per
    call, once at load, one row at a time for a lookup) gives the same numbers.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None

    def __init__(self, shape: Sequence[int], bits: int, group_size: int, scale_dtype: str, offset: bool) -> None:
        super().__init__()
        rows, cols = shape
        if bits not in (4, 8) or cols % group_size or (bits == 4 and group_size % 2):
            raise ValueError(f"bad packed weight: shape {tuple(shape)}, {bits} bits, groups of {group_size}")
        self.shape = (rows, cols)
        self.bits = bits
        self.group_size = group_size
        dtype = getattr(torch, scale_dtype)
        if bits == 8:
            self.register_buffer("codes", torch.empty(rows, cols, dtype=torch.int8))
        else:
            self.register_buffer("codes", torch.empty(rows, cols // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.empty(rows, cols // group_size, dtype=dtype))
        self.register_buffer("offset", torch.empty(rows, cols // group_size, dtype=dtype) if offset else None)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PackedWeight:
        return cls(spec["shape"], spec["bits"], spec["group_size"], spec["scale_dtype"], spec["offset"])

    def spec(self) -> dict[str, Any]:
        """What the manifest records to rebuild an empty PackedWeight of this layout."""
        return {
            "shape": list(self.shape),
            "bits": self.bits,
            "group_size": self.group_size,
            "scale_dtype": str(self.scale.dtype).removeprefix("torch."),
            "offset": self.offset is not None,
        }

    def dequantize(self, rows: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight, or only the rows `rows` (any shape of indices) for an embedding lookup."""
        codes, scale, offset = self.codes, self.scale, self.offset
        if rows is not None:
            codes, scale = codes[rows], scale[rows]
            offset = None if offset is None else offset[rows]
        if self.bits == 4:
            codes = torch.stack((codes & 15, codes >> 4), dim=-1).reshape(*codes.shape[:-1], self.shape[1])
        lead = codes.shape[:-1]
        groups = codes.reshape(*lead, -1, self.group_size).to(torch.float32) * scale.to(torch.float32)[..., None]
        if offset is not None:
            groups = groups + offset.to(torch.float32)[..., None]
        return groups.reshape(*lead, self.shape[1]).to(dtype)


class PackedLinear(torch.nn.Module):
    """nn.Linear on a PackedWeight, de-quantized on every call (weights stay small in memory)."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.packed = packed
        self.out_features, self.in_features = packed.shape
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.packed.dequantize(dtype=x.dtype), self.bias)


class PackedEmbedding(torch.nn.Module):
    """nn.Embedding on a PackedWeight: a lookup de-quantizes only the rows it reads."""

    def __init__(self, packed: PackedWeight) -> None:
        super().__init__()
        self.packed = packed
        self.num_embeddings, self.embedding_dim = packed.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.packed.dequantize(rows=ids)


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


def load_model(weights_dir: str | Path, device: str = "cpu", dequantize: bool = False) -> LoadedModel:
    """Rebuilds the model a build saved, quantized tensors included, from its manifest.

    Packed integer weights stay packed in memory and are de-quantized on each call, unless
    `dequantize` is true: then they are de-quantized once here into plain float32 layers (float32
    memory and speed; the same numbers either way).
    """
    weights_dir = Path(weights_dir)
    manifest = json.loads((weights_dir / MANIFEST_FILE).read_text())
    kind = manifest["kind"]
    dtype = getattr(torch, manifest["dtype"])
    auto = AutoModelForCausalLM if kind == CAUSAL_LM else AutoModel
    model: Any
    if manifest["format"] == "safetensors":
        model = auto.from_pretrained(weights_dir, dtype=dtype)
    else:
        # Importing the prototype int4 module registers Int4OpaqueTensor as safe for weights_only loads.
        import torchao.prototype.quantization.int4  # noqa: F401

        model = auto.from_config(AutoConfig.from_pretrained(weights_dir), dtype=dtype)
        if manifest["conv1d_to_linear"]:
            conv1d_to_linear(model)
        state = torch.load(weights_dir / STATE_FILE, weights_only=True, mmap=True)
        if manifest["format"] == PACKED_FORMAT:
            _load_packed(model, state, manifest, dequantize)
        else:
            # assign=True keeps the torchao tensor subclasses (copying into float parameters would not).
            model.load_state_dict(state, assign=True, strict=True)
            if manifest["tied_embedding"]:
                model.get_input_embeddings().weight = model.get_output_embeddings().weight
    model = model.to(device).eval()
    return prepare(model, AutoTokenizer.from_pretrained(weights_dir), kind, manifest)


def _load_packed(model: Any, state: dict[str, torch.Tensor], manifest: dict[str, Any], dequantize: bool) -> None:
    """Puts the packed weights (manifest `packed`: module name -> layout) and the float tensors in place.

    A tied LM head is stored once, as the input embedding's PackedWeight, and shares it again here.
    """
    packed: dict[str, PackedWeight] = {}
    for name, spec in manifest["packed"].items():
        weight = PackedWeight.from_spec(spec)
        prefix = f"{name}.packed."
        own = {key.removeprefix(prefix): state.pop(key) for key in list(state) if key.startswith(prefix)}
        weight.load_state_dict(own, strict=True, assign=True)
        packed[name] = weight
    head_name = None
    if manifest["tied_embedding"]:
        head_name = next(name for name, module in model.named_modules() if module is model.get_output_embeddings())
        embedding_name = next(name for name, module in model.named_modules() if module is model.get_input_embeddings())
        packed[head_name] = packed[embedding_name]
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    expected_missing = {f"{name}.weight" for name in packed}
    if unexpected or set(missing) != expected_missing:
        raise ValueError(
            f"{STATE_FILE} does not match the model: missing {sorted(set(missing) - expected_missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    floats: dict[int, torch.nn.Parameter] = {}
    for name, weight in packed.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = getattr(parent, child)
        # Embedding subclasses (e.g. scaled embeddings) keep their own forward: they get float weights.
        plain_embedding = type(module) is torch.nn.Embedding
        if dequantize or not (plain_embedding or isinstance(module, torch.nn.Linear)):
            if id(weight) not in floats:
                floats[id(weight)] = torch.nn.Parameter(weight.dequantize(), requires_grad=False)
            module.weight = floats[id(weight)]
        elif plain_embedding:
            setattr(parent, child, PackedEmbedding(weight))
        else:
            setattr(parent, child, PackedLinear(weight, module.bias))


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
