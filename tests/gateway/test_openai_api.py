"""The official `openai` client and raw HTTP against `batchline gateway` in front of a real tritonserver."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

from tests.gateway.conftest import EchoRepository, GatewayProcess, metric_value, wait_for

pytestmark = pytest.mark.triton

WORDS = "the quick brown fox jumps over the lazy dog"


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayProcess], triton: object) -> GatewayProcess:
    url = triton.grpc_url  # type: ignore[attr-defined]
    return gateway_factory(
        "--upstream", f"echo={url}",
        "--upstream", f"slow={url}",
        "--upstream", "chat=127.0.0.1:1?triton_model=echo",  # nothing listens on :1; echo's other replica
        "--upstream", f"chat={url}?triton_model=echo",
        "--upstream", f"minilm={url}?task=embeddings&triton_model=embed",
    )


def client(gateway: GatewayProcess, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=str(kwargs.pop("api_key", "unused")),
                         max_retries=0, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_models_lists_every_upstream_model(gateway: GatewayProcess) -> None:
    models = {model.id: model for model in client(gateway).models.list()}
    assert set(models) == {"echo", "slow", "chat", "minilm"}
    assert models["minilm"].model_extra is not None and models["minilm"].model_extra["task"] == "embeddings"
    assert models["chat"].model_extra is not None and models["chat"].model_extra["ready_replicas"] == 2


def test_chat_completion_and_its_usage(gateway: GatewayProcess) -> None:
    answer = client(gateway).chat.completions.create(
        model="echo", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": WORDS}],
        max_completion_tokens=50, temperature=0.5, top_p=0.9, seed=7,
    )
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == WORDS
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (11, 9, 20)


def test_chat_stream_delivers_the_words_in_chunks_with_usage(gateway: GatewayProcess) -> None:
    stream = client(gateway).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": WORDS}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == WORDS
    assert len(deltas) == len(WORDS.split())  # one chunk per token, not one at the end
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9
    assert len({c.id for c in chunks}) == 1


def test_completions_with_max_tokens_and_stop(gateway: GatewayProcess) -> None:
    api = client(gateway)
    short = api.completions.create(model="echo", prompt=WORDS, max_tokens=3)
    assert (short.choices[0].text, short.choices[0].finish_reason) == ("the quick brown", "length")
    assert short.usage is not None and short.usage.completion_tokens == 3
    stopped = api.completions.create(model="echo", prompt=WORDS, max_tokens=50, stop=[" fox", "zebra"])
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == ("the quick brown", "stop")
    streamed = api.completions.create(model="echo", prompt=WORDS, max_tokens=4, stream=True)
    pieces = list(streamed)
    assert "".join(p.choices[0].text for p in pieces) == "the quick brown fox"
    assert pieces[-1].choices[0].finish_reason == "length"


def test_a_request_to_an_unreachable_replica_is_retried_on_another(gateway: GatewayProcess) -> None:
    api = client(gateway)
    for _ in range(4):  # least-loaded with rotating ties would send some of these to the dead one
        answer = api.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello again"}])
        assert answer.choices[0].message.content == "hello again"
    assert metric_value(gateway.metrics(), "batchline_gateway_upstream_retries_total", model="chat") >= 1


def test_embeddings_match_triton(gateway: GatewayProcess, triton: object) -> None:
    texts = ["first text", "second text", "third"]
    direct = grpcclient.InferenceServerClient(triton.grpc_url)  # type: ignore[attr-defined]
    expected = []
    for text in texts:
        tensor = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        expected.append(direct.infer("embed", [tensor]).as_numpy("embedding")[0])
    direct.close()
    api = client(gateway)
    as_base64 = api.embeddings.create(model="minilm", input=texts)  # the client asks for base64 by default
    as_floats = api.embeddings.create(model="minilm", input=texts, encoding_format="float")
    for answer in (as_base64, as_floats):
        assert [item.index for item in answer.data] == [0, 1, 2]
        for item, vector in zip(answer.data, expected, strict=True):
            np.testing.assert_allclose(item.embedding, vector, rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "error", "param"),
    [
        (lambda api: api.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}],
                                                 temperature=2.5), openai.BadRequestError, "temperature"),
        (lambda api: api.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], n=2),
         openai.BadRequestError, "n"),
        (lambda api: api.completions.create(model="echo", prompt="x", max_tokens=0), openai.BadRequestError,
         "max_tokens"),
        (lambda api: api.chat.completions.create(model="echo", messages=[]), openai.BadRequestError, "messages"),
        (lambda api: api.embeddings.create(model="echo", input="x"), openai.BadRequestError, "model"),
        (lambda api: api.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "x"}]),
         openai.BadRequestError, "model"),
        (lambda api: api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}]),
         openai.NotFoundError, "model"),
    ],
    ids=["temperature", "n", "max-tokens", "no-messages", "embeddings-on-llm", "chat-on-embedder", "unknown-model"],
)
def test_bad_requests_raise_the_openai_error_classes(
    gateway: GatewayProcess, call: Callable[[openai.OpenAI], object], error: type[Exception], param: str
) -> None:
    with pytest.raises(error) as raised:
        call(client(gateway))
    body = raised.value.body  # type: ignore[attr-defined]
    assert body["param"] == param and body["message"]


def _post(gateway: GatewayProcess, path: str, body: bytes, headers: dict[str, str] | None = None
          ) -> http.client.HTTPResponse:
    parts = urlsplit(gateway.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    return connection.getresponse()


def test_raw_sse_arrives_token_by_token_and_ends_with_done(gateway: GatewayProcess) -> None:
    body = json.dumps({"model": "slow", "prompt": "one two three four five six seven eight", "stream": True,
                       "max_tokens": 8}).encode()
    started = time.monotonic()
    response = _post(gateway, "/v1/completions", body)
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    events, arrivals = [], []
    for line in response:
        if line.strip():
            assert line.startswith(b"data: ")
            events.append(line[6:].strip())
            arrivals.append(time.monotonic() - started)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == "one two three four five six seven eight"
    # 40 ms per token upstream: the first token reaches the client long before the last one.
    assert arrivals[-1] - arrivals[0] > 0.15


def test_malformed_and_oversized_bodies_get_openai_errors(gateway: GatewayProcess) -> None:
    response = _post(gateway, "/v1/chat/completions", b"{not json")
    assert response.status == 400
    assert json.loads(response.read())["error"]["type"] == "invalid_request_error"
    response = _post(gateway, "/v1/completions", json.dumps({"model": "echo", "prompt": "x" * (2 << 20)}).encode())
    assert response.status == 413
    assert "larger than" in json.loads(response.read())["error"]["message"]


def test_a_client_that_disconnects_cancels_the_generation(gateway: GatewayProcess,
                                                          echo_repository: EchoRepository) -> None:
    before = echo_repository.cancellations()
    body = json.dumps({"model": "slow", "prompt": "repeat: a b c", "stream": True, "max_tokens": 2000}).encode()
    response = _post(gateway, "/v1/completions", body)
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # streaming has begun
    response.close()  # the client goes away (80 s of generation left)
    wait_for(lambda: echo_repository.cancellations() > before, 20, "the model to see the request cancelled")
    wait_for(lambda: metric_value(gateway.metrics(), "batchline_gateway_upstream_cancellations_total",
                                  model="slow") >= 1, 10, "the cancellation in the gateway's metrics")
    assert metric_value(gateway.metrics(), "batchline_gateway_requests_in_flight", model="slow") == 0


def test_metrics_cover_latency_tokens_and_status(gateway: GatewayProcess) -> None:
    api = client(gateway)
    list(api.completions.create(model="echo", prompt=WORDS, max_tokens=20, stream=True))
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model="echo", prompt="x", temperature=-1)
    text = gateway.metrics()
    assert metric_value(text, "batchline_gateway_time_to_first_token_seconds_count", model="echo") == 1
    assert metric_value(text, "batchline_gateway_time_per_output_token_seconds_count", model="echo") == 1
    assert metric_value(text, "batchline_gateway_request_duration_seconds_count", model="echo",
                        endpoint="completions") == 2
    assert metric_value(text, "batchline_gateway_requests_total", model="echo", code="200") == 1
    assert metric_value(text, "batchline_gateway_requests_total", model="echo", code="400") == 1
    assert metric_value(text, "batchline_gateway_completion_tokens_total", model="echo") == 9
    assert metric_value(text, "batchline_gateway_prompt_tokens_total", model="echo") == 9
    # The demand gauges exist from the start for every model, at 0, naming the model in their own labels.
    waiting = 'batchline_gateway_requests_waiting{llmdeployment="slow",llmdeployment_namespace="",model="slow"}'
    assert f"{waiting} 0.0" in text


def test_api_keys(gateway_factory: Callable[..., GatewayProcess], triton: object, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\nsk-file-key\n")
    gateway = gateway_factory("--upstream", f"echo={triton.grpc_url}", "--api-key-file", str(keys),  # type: ignore[attr-defined]
                              env={"BATCHLINE_GATEWAY_API_KEYS": "sk-env-key"})
    for key in ("sk-file-key", "sk-env-key"):
        answer = client(gateway, api_key=key).completions.create(model="echo", prompt="hi", max_tokens=2)
        assert answer.choices[0].text == "hi"
    for key in ("wrong", "sk-file-ke", "sk-file-key2"):
        with pytest.raises(openai.AuthenticationError):
            client(gateway, api_key=key).models.list()
    response = _post(gateway, "/v1/completions", json.dumps({"model": "echo", "prompt": "hi"}).encode())
    assert response.status == 401  # no Authorization header at all
    assert json.loads(response.read())["error"]["type"] == "authentication_error"
    assert "sk-file-key" not in gateway.log_text() and "sk-env-key" not in gateway.log_text()
    assert "batchline_gateway_requests_total" in gateway.metrics()  # Prometheus scrapes without a key


def test_a_generation_that_fails_midway_ends_with_an_error_not_a_hang(gateway: GatewayProcess) -> None:
    api = client(gateway)
    for prompt in ("fail: one two three", "broken: one two three"):
        received = ""
        with pytest.raises(openai.APIError) as raised:
            for chunk in api.chat.completions.create(model="echo", messages=[{"role": "user", "content": prompt}],
                                                     stream=True):
                received += chunk.choices[0].delta.content or ""
        assert received == " ".join(prompt.split()[: 1 if prompt.startswith("fail") else 2])  # what came first
        assert ("engine failed" if prompt.startswith("fail") else "KV cache ran out") in raised.value.message
    with pytest.raises(openai.APIStatusError) as whole:
        api.completions.create(model="echo", prompt="broken: one two three")
    assert whole.value.status_code == 502 and "KV cache ran out" in whole.value.message
