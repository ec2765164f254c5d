"""The in-flight engine in this process: transformers' continuous batching on a tiny model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from model_repo_builder.engine import (
    PER_SEQUENCE_ATTENTION,
    Engine,
    RequestError,
    Sampling,
    Update,
    _find_stop,
    _Request,
    _stop_prefix_length,
    per_sequence_sdpa,
)
from model_repo_builder.runtime import LoadedModel, generate, prepare

pytestmark = pytest.mark.torch

PROMPTS = ["The city council met", "Computers store numbers", "A good recipe for bread", "Rivers flow"]
DEADLINE_S = 60.0


def _load(checkpoint: Path) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return prepare(model, AutoTokenizer.from_pretrained(checkpoint), "causal-lm", {})


class Collector:
    """A request's sink: keeps every update and says when the last one came."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.done = threading.Event()

    def __call__(self, update: Update) -> None:
        self.updates.append(update)
        if update.finished:
            self.done.set()

    def wait(self) -> Update:
        assert self.done.wait(DEADLINE_S), "the request did not finish in time"
        return self.updates[-1]

    @property
    def text(self) -> str:
        return "".join(update.text for update in self.updates)


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tiny_llama: Path) -> LoadedModel:
    return _load(tiny_llama)


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> Iterator[Engine]:
    # Its own model object: a model driven by the engine must not also run plain forward passes.
    loaded = _load(tiny_llama)
    running = Engine(loaded.model, loaded.tokenizer, kv_cache_tokens=1024, max_batch_tokens=256, max_requests=8)
    yield running
    running.close()


def test_greedy_output_equals_generate_token_for_token(engine: Engine, reference: LoadedModel) -> None:
    assert engine.attention == PER_SEQUENCE_ATTENTION  # the CPU path under test
    sinks = [Collector() for _ in PROMPTS]
    for prompt, sink, tokens in zip(PROMPTS, sinks, (12, 20, 7, 16), strict=True):
        engine.submit(engine.encode(prompt), Sampling(max_tokens=tokens), sink)
    for prompt, sink, tokens in zip(PROMPTS, sinks, (12, 20, 7, 16), strict=True):
        final = sink.wait()
        (expected,) = generate(reference, [prompt], [tokens], [0.0], [1.0], [[]])
        assert sink.text == expected
        assert (final.finish_reason, final.completion_tokens) == ("length", tokens)
        assert final.prompt_tokens == len(reference.tokenizer(prompt)["input_ids"])
        assert len(sink.updates) > 2  # streamed: several pieces, then the final update


def test_stop_strings_are_cut_and_never_streamed(engine: Engine, reference: LoadedModel) -> None:
    (expected,) = generate(reference, [PROMPTS[1]], [20], [0.0], [1.0], [[]])
    stop = expected[5:8]
    sink = Collector()
    engine.submit(engine.encode(PROMPTS[1]), Sampling(max_tokens=20, stop=("never there", stop)), sink)
    final = sink.wait()
    assert sink.text == expected[: expected.index(stop)]
    assert final.finish_reason == "stop" and final.completion_tokens < 20


def test_a_seed_gives_the_same_sample_whatever_runs_beside_it(engine: Engine) -> None:
    def sample(seed: int, neighbours: int = 0) -> str:
        for index in range(neighbours):
            engine.submit(engine.encode(PROMPTS[index]), Sampling(max_tokens=10, temperature=1.0), lambda _: None)
        sink = Collector()
        engine.submit(engine.encode(PROMPTS[0]), Sampling(max_tokens=12, temperature=0.8, top_p=0.9, seed=seed), sink)
        sink.wait()
        return sink.text

    alone = sample(7)
    assert sample(7, neighbours=3) == alone
    assert sample(8) != alone or sample(9) != alone


def test_a_new_request_joins_the_running_batch(engine: Engine) -> None:
    long, short = Collector(), Collector()
    engine.submit(engine.encode(PROMPTS[0]), Sampling(max_tokens=400), long)
    wait_until(lambda: len(long.updates) >= 3, "the long request to stream")
    engine.submit(engine.encode(PROMPTS[1]), Sampling(max_tokens=3), short)
    assert short.wait().finish_reason == "length"
    assert not long.done.is_set(), "the short request waited for the long one"
    assert long.wait().completion_tokens == 400


def test_a_prompt_too_long_is_refused_and_the_engine_carries_on(engine: Engine) -> None:
    sink = Collector()
    engine.submit(engine.encode(PROMPTS[0]), Sampling(max_tokens=30), sink)
    with pytest.raises(RequestError, match="context"):
        engine.submit(engine.encode(PROMPTS[2] * 120), Sampling(max_tokens=4), Collector())
    with pytest.raises(RequestError, match="max_tokens"):
        Sampling(max_tokens=0)
    assert sink.wait().finish_reason == "length"


def test_cancelling_ends_the_request_and_frees_its_cache(engine: Engine) -> None:
    cancelled = threading.Event()
    sink = Collector()
    engine.submit(engine.encode(PROMPTS[3]), Sampling(max_tokens=450), sink, is_cancelled=cancelled.is_set)
    wait_until(lambda: engine.stats().kv_blocks_used > 0 and len(sink.updates) >= 2, "the request to run")
    cancelled.set()
    final = sink.wait()
    assert final.finish_reason == "cancelled" and final.completion_tokens < 450
    wait_until(lambda: engine.stats() == engine.stats().__class__(0, 0, 0, engine.kv_blocks_total), "blocks freed")


def test_close_stops_the_engine_and_fails_what_still_runs(tiny_llama: Path) -> None:
    loaded = _load(tiny_llama)
    engine = Engine(loaded.model, loaded.tokenizer, kv_cache_tokens=1024, max_batch_tokens=256, max_requests=4)
    sink = Collector()
    engine.submit(engine.encode(PROMPTS[0]), Sampling(max_tokens=450), sink)
    wait_until(lambda: len(sink.updates) >= 2, "the request to stream")
    started = time.monotonic()
    engine.close(timeout=10)
    assert time.monotonic() - started < 10
    assert not engine.running
    final = sink.wait()
    assert final.finish_reason == "error" and final.error
    with pytest.raises(RuntimeError, match="stopped"):
        engine.submit(engine.encode(PROMPTS[0]), Sampling(max_tokens=2), Collector())


def test_streamed_text_never_splits_a_multi_byte_character(engine: Engine) -> None:
    text = "café 😀 naïve"
    tokens = engine.tokenizer(text)["input_ids"]
    assert len(tokens) > len(text.split()) + 2  # the byte-level tokenizer splits the characters
    # Replay outputs as the manager sends them (each carries all tokens so far, one more each time)
    # through the engine's own output handling, for a request the engine does not run.
    replay = Collector()
    engine._requests["replay"] = _Request("replay", 1, Sampling(max_tokens=len(tokens)), len(tokens), replay, None)
    for count in range(1, len(tokens) + 1):
        output = SimpleNamespace(
            request_id="replay", status=2, error=None, generated_tokens=tokens[:count],
            is_finished=lambda count=count: count == len(tokens),
        )  # fmt: skip
        engine._handle(output)
    final = replay.wait()
    assert replay.text == text and final.finish_reason == "length"
    assert all("\ufffd" not in update.text for update in replay.updates)


def test_per_sequence_attention_equals_the_masked_batch() -> None:
    """One step of three sequences: a decode (1 query, 5 cached keys), a prefill (4 queries, no cache)
    and a prefill chunk after 3 cached keys (2 queries, 5 keys), grouped-query heads (4 over 2)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    lengths_q, lengths_k = (1, 4, 2), (6, 4, 5)
    query = torch.randn(1, 4, sum(lengths_q), 8, generator=generator)
    key, value = (torch.randn(1, 2, sum(lengths_k), 8, generator=generator) for _ in range(2))
    mask = torch.zeros(sum(lengths_q), sum(lengths_k), dtype=torch.bool)
    row = column = 0
    for new, seen in zip(lengths_q, lengths_k, strict=True):
        mask[row : row + new, column : column + seen] = torch.ones(new, seen, dtype=torch.bool).tril(seen - new)
        row, column = row + new, column + seen
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1), attn_mask=mask
    ).transpose(1, 2)
    module = SimpleNamespace(num_key_value_groups=2)
    starts_q = torch.tensor([0, 1, 5, 7], dtype=torch.int32)
    starts_k = torch.tensor([0, 6, 10, 15], dtype=torch.int32)
    got, _ = per_sequence_sdpa(module, query, key, value, None, cu_seq_lens_q=starts_q, cu_seq_lens_k=starts_k)
    torch.testing.assert_close(got, expected)


def test_stop_string_helpers() -> None:
    assert _find_stop("hello world", ("wor", "lo"), 0) == 3
    assert _find_stop("hello world", ("xyz",), 0) is None
    assert _stop_prefix_length("the end is ne", ("near",)) == 2
    assert _stop_prefix_length("the end", ("near", "d")) == 0


def test_a_transformers_without_continuous_batching_fails_at_load_with_a_clear_message() -> None:
    from model_repo_builder.engine import EngineUnavailableError

    older = SimpleNamespace(config=None)  # a model object as transformers < 5.17 builds it: no init_continuous_batching
    with pytest.raises(
        EngineUnavailableError, match=r"no continuous batching.*transformers>=5\.17,<6.*--engine static"
    ):
        Engine(older, None, kv_cache_tokens=1024, max_batch_tokens=256, max_requests=8)
