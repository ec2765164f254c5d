"""The gateway in front of the real engines that `batchline build` writes for a tiny random Llama with
a chat template: the in-flight engine (decoupled, streaming) and the static one (one generate() per
Triton batch, not decoupled), driven with the `openai` client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import openai
import pytest

from tests.gateway.conftest import GatewayProcess

pytestmark = [pytest.mark.triton, pytest.mark.torch]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pytest.importorskip("torch")
    from model_repo_builder import BatchingOptions, BuildOptions, Mode, QualityThresholds, TritonServer, build
    from model_repo_builder.options import Engine
    from model_repo_builder.testing import add_chat_template, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("engine")
    checkpoint = add_chat_template(make_tiny_checkpoint(root / "tiny", "llama"), root / "chat")
    options = BuildOptions(
        mode=Mode.INT8_WEIGHT_ONLY, model_name="llm", torch_threads=1, batching=BatchingOptions(max_batch_size=8),
        quality=QualityThresholds(max_perplexity_increase=1.0, min_top1_agreement=0.0, min_cosine_similarity=0.0),
        kv_cache_tokens=1024, max_batch_tokens=256,
    )
    inflight = build(checkpoint, root / "builds", options)
    static = build(checkpoint, root / "builds", replace(options, model_name="static", engine=Engine.STATIC))
    with TritonServer([Path(inflight.repository), Path(static.repository)]) as server:
        yield server


@pytest.fixture
def api(engine: object, gateway_factory: Callable[..., GatewayProcess]) -> openai.OpenAI:
    url = engine.grpc_url  # type: ignore[attr-defined]
    gateway = gateway_factory("--upstream", f"tiny={url}?triton_model=llm", "--upstream", f"static={url}")
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_streamed_and_whole_answers_agree(api: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me about the city council."}]
    whole = api.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    chunks = list(api.chat.completions.create(model="tiny", messages=messages, max_tokens=12,  # type: ignore[arg-type]
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content and streamed
    assert whole.usage is not None and chunks[-1].usage is not None
    assert whole.usage.prompt_tokens > 5 and 1 <= whole.usage.completion_tokens <= 12
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason] and finish[0] in ("stop", "length")


def test_completions_honour_max_tokens_and_seeded_sampling(api: openai.OpenAI) -> None:
    short = api.completions.create(model="tiny", prompt="The city council met", max_tokens=4, temperature=0)
    assert short.usage is not None and short.usage.completion_tokens <= 4
    if short.choices[0].finish_reason == "length":
        assert short.usage.completion_tokens == 4
    first, second = (api.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=1.0,
                                            top_p=0.9, seed=11).choices[0].text for _ in range(2))
    assert first == second  # the same seed samples the same text


def test_a_prompt_too_long_for_the_engine_is_a_bad_request(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="prompt"):
        api.completions.create(model="tiny", prompt="word " * 3000, max_tokens=4)
    assert api.completions.create(model="tiny", prompt="still fine", max_tokens=2).choices[0].text is not None


def test_the_static_engine_answers_whole_and_streamed(api: openai.OpenAI) -> None:
    """A model that is not decoupled: one ModelInfer, its text as one chunk; no messages input, so a
    chat request reaches it as role-prefixed lines."""
    inflight = api.completions.create(model="tiny", prompt="The city council met", max_tokens=6, temperature=0)
    whole = api.completions.create(model="static", prompt="The city council met", max_tokens=6, temperature=0)
    assert whole.choices[0].text == inflight.choices[0].text  # the same weights, greedy
    streamed = list(api.completions.create(model="static", prompt="The city council met", max_tokens=6,
                                           temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == "stop"
    chat = api.chat.completions.create(model="static", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert isinstance(chat.choices[0].message.content, str)
