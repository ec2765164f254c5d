"""The gateway in front of the real in-flight engine that `batchline build` writes (a tiny random
Llama with a chat template, decoupled, streaming), driven with the `openai` client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.gateway.conftest import GatewayProcess

pytestmark = [pytest.mark.triton, pytest.mark.torch]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pytest.importorskip("torch")
    from model_repo_builder import BatchingOptions, BuildOptions, Mode, QualityThresholds, TritonServer, build
    from model_repo_builder.testing import add_chat_template, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("engine")
    checkpoint = add_chat_template(make_tiny_checkpoint(root / "tiny", "llama"), root / "chat")
    options = BuildOptions(
        mode=Mode.INT8_WEIGHT_ONLY, model_name="llm", torch_threads=1, batching=BatchingOptions(max_batch_size=8),
        quality=QualityThresholds(max_perplexity_increase=1.0, min_top1_agreement=0.0, min_cosine_similarity=0.0),
        kv_cache_tokens=1024, max_batch_tokens=256,
    )
    result = build(checkpoint, root / "builds", options)
    with TritonServer([Path(result.repository)]) as server:
        yield server


@pytest.fixture
def api(engine: object, gateway_factory: Callable[..., GatewayProcess]) -> openai.OpenAI:
    gateway = gateway_factory("--upstream", f"tiny={engine.grpc_url}?triton_model=llm")  # type: ignore[attr-defined]
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
