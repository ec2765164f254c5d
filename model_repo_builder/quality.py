"""The quality gate: the quantized model against the unquantized one, on the shipped evaluation text."""

from __future__ import annotations

from typing import Any

import torch

from .errors import QualityGateError
from .eval_text import EVAL_TEXT, eval_sentences
from .options import QualityThresholds
from .runtime import CAUSAL_LM, LoadedModel, embed

# The text is cut into consecutive windows of this many tokens (less where the model's context is
# shorter), each run on its own: ~1,900 SmolLM2 tokens in 5 windows.
MAX_EVAL_TOKENS = 384


def evaluate(reference: LoadedModel, candidate: LoadedModel) -> dict[str, float]:
    if reference.kind == CAUSAL_LM:
        return _causal_lm(reference, candidate)
    return _embedding(reference, candidate)


def eval_windows(tokenizer: Any, context: int) -> list[torch.Tensor]:
    """The evaluation text's token ids, cut into windows of at most MAX_EVAL_TOKENS and `context`."""
    ids = tokenizer(EVAL_TEXT, return_tensors="pt").input_ids[0]
    size = min(MAX_EVAL_TOKENS, context)
    windows = [ids[start : start + size] for start in range(0, len(ids), size)]
    return [window for window in windows if len(window) > 1]


def _logits(loaded: LoadedModel, windows: list[torch.Tensor]) -> torch.Tensor:
    """Next-token logits at every position but each window's last, windows one after another."""
    with torch.inference_mode():
        return torch.cat([loaded.model(w[None].to(loaded.device)).logits.float().cpu()[0, :-1] for w in windows])


def _causal_lm(reference: LoadedModel, candidate: LoadedModel) -> dict[str, float]:
    context = getattr(reference.model.config, "max_position_embeddings", MAX_EVAL_TOKENS)
    windows = eval_windows(reference.tokenizer, context)
    ref_logits = _logits(reference, windows)
    logits = _logits(candidate, windows)
    targets = torch.cat([window[1:] for window in windows])
    ref_ppl = torch.exp(torch.nn.functional.cross_entropy(ref_logits, targets)).item()
    ppl = torch.exp(torch.nn.functional.cross_entropy(logits, targets)).item()
    return {
        "eval_tokens": sum(len(window) for window in windows),
        "eval_predictions": int(targets.numel()),
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
            f"quality gate failed for mode {mode}: "
            + "; ".join(failures)
            + ". Pick a gentler mode or loosen the thresholds (see `batchline build --help`)"
        )
