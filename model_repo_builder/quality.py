"""The quality gate: the quantized model against the unquantized one, on the shipped evaluation text."""

from __future__ import annotations

from typing import Any

import torch

from .errors import QualityGateError
from .eval_text import EVAL_TEXT, eval_sentences
from .options import QualityThresholds
from .runtime import CAUSAL_LM, LoadedModel, embed

# Enough context for stable figures while keeping the int4 CPU kernel's prefill short.
MAX_EVAL_TOKENS = 384


def evaluate(reference: LoadedModel, candidate: LoadedModel) -> dict[str, float]:
    if reference.kind == CAUSAL_LM:
        return _causal_lm(reference, candidate)
    return _embedding(reference, candidate)


def _causal_lm(reference: LoadedModel, candidate: LoadedModel) -> dict[str, float]:
    limit = min(MAX_EVAL_TOKENS, getattr(reference.model.config, "max_position_embeddings", MAX_EVAL_TOKENS))
    ids = reference.tokenizer(EVAL_TEXT, return_tensors="pt").input_ids[:, :limit]
    with torch.inference_mode():
        ref_logits = reference.model(ids.to(reference.device)).logits.float().cpu()[0, :-1]
        logits = candidate.model(ids.to(candidate.device)).logits.float().cpu()[0, :-1]
    targets = ids[0, 1:]
    ref_ppl = torch.exp(torch.nn.functional.cross_entropy(ref_logits, targets)).item()
    ppl = torch.exp(torch.nn.functional.cross_entropy(logits, targets)).item()
    return {
        "eval_tokens": int(ids.shape[1]),
        "reference_perplexity": ref_ppl,
        "perplexity": ppl,
        "perplexity_increase": ppl / ref_ppl - 1.0,
        "top1_agreement": (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
        "max_logit_error": (logits - ref_logits).abs().max().item(),
    }


def _embedding(reference: LoadedModel, candidate: LoadedModel) -> dict[str, float]:
    sentences = eval_sentences()
    cosine = (torch.from_numpy(embed(reference, sentences)) * torch.from_numpy(embed(candidate, sentences))).sum(-1)
    return {
        "eval_sentences": len(sentences),
        "min_cosine_similarity": cosine.min().item(),
        "mean_cosine_similarity": cosine.mean().item(),
    }


def gate_failures(metrics: dict[str, Any], thresholds: QualityThresholds) -> list[str]:
    """Each threshold the metrics break, as a sentence; empty when the build passes."""
    failures = []
    if "perplexity_increase" in metrics:
        if metrics["perplexity_increase"] > thresholds.max_perplexity_increase:
            failures.append(
                f"perplexity rose by {metrics['perplexity_increase']:.2%} "
                f"(limit {thresholds.max_perplexity_increase:.2%})"
            )
        if metrics["top1_agreement"] < thresholds.min_top1_agreement:
            failures.append(
                f"top-1 agreement is {metrics['top1_agreement']:.2%} (minimum {thresholds.min_top1_agreement:.2%})"
            )
        limit = thresholds.max_logit_error
        if limit is not None and metrics["max_logit_error"] > limit:
            failures.append(f"max logit error is {metrics['max_logit_error']:.4f} (limit {limit})")
    elif metrics["min_cosine_similarity"] < thresholds.min_cosine_similarity:
        failures.append(
            f"minimum cosine similarity is {metrics['min_cosine_similarity']:.4f} "
            f"(minimum {thresholds.min_cosine_similarity})"
        )
    return failures


def check_gate(metrics: dict[str, Any], thresholds: QualityThresholds, mode: str) -> None:
    failures = gate_failures(metrics, thresholds)
    if failures:
        raise QualityGateError(
            f"quality gate failed for mode {mode}: " + "; ".join(failures)
            + ". Pick a gentler mode or loosen the thresholds (see `batchline build --help`)"
        )
