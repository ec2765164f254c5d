"""Magnitude pruning: zeroes the smallest weights of every body Linear layer before quantization.

Unstructured, per output row: each row of each Linear layer but the LM head (GPT-2 `Conv1D` layers
included) loses the same number of weights, round(sparsity * row length), smallest |w| first, so
no row is emptied while another keeps everything. Embeddings and the LM head are left alone: their
rows are looked up or compared one by one, and pruning them removes tokens rather than noise.

Nothing here makes the repository smaller or the CPU faster: the weights are stored and multiplied
densely, zeros included (see docs/builder.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from .runtime import output_head

PATTERN = "unstructured, per output row (smallest |w| first), Linear layers except the LM head"


@dataclass(frozen=True)
class PruningSummary:
    sparsity: float
    layers: int
    pruned_weights: int
    body_weights: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "pattern": PATTERN,
            "layers": self.layers,
            "pruned_weights": self.pruned_weights,
            "body_weights": self.body_weights,
        }


def body_weights(model: Any) -> Iterator[torch.Tensor]:
    """Each body layer's weight as an [out, in] float tensor (a view where the layer stores one).

    Reads float and torchao (de-quantized copy) layers alike.
    """
    head = output_head(model)
    for module in model.modules():
        if module is head:
            continue
        if isinstance(module, torch.nn.Linear):
            weight = module.weight.detach()
            yield weight.dequantize() if hasattr(weight, "qdata") else weight
        elif isinstance(module, Conv1D):
            yield module.weight.detach().t()


def prune_model(model: Any, sparsity: float) -> PruningSummary:
    """Zeroes round(sparsity * in_features) weights of every row of every body layer, in place."""
    layers = pruned = total = 0
    with torch.no_grad():
        for weight in body_weights(model):
            total += weight.numel()
            count = round(sparsity * weight.shape[1])
            if count == 0:
                continue
            smallest = weight.abs().topk(count, dim=1, largest=False).indices
            weight.scatter_(1, smallest, 0.0)
            layers += 1
            pruned += count * weight.shape[0]
    return PruningSummary(sparsity, layers, pruned, total)


def zero_fraction(model: Any) -> float:
    """Share of exact zeros in the body layers' weights, as the model computes with them."""
    zeros = total = 0
    for weight in body_weights(model):
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else 0.0
