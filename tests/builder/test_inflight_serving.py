"""The in-flight engine served by a real tritonserver: gRPC streaming, HTTP generate and
generate_stream, errors, cancellation, metrics, several instances and unloading."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient

from batchline_tools.triton_inputs import triton_inputs
from model_repo_builder import BatchingOptions, BuildOptions, Mode, TritonServer, build
from model_repo_builder.builder import BuildResult
from model_repo_builder.runtime import generate, load_model

from .conftest import LOOSE, THREADS

pytestmark = [pytest.mark.triton, pytest.mark.torch]

MODEL = "llm"
PROMPTS = ["The city council met", "Computers store numbers", "A good recipe for bread"]
DEADLINE_S = 60.0
METRICS = (
    "time_to_first_token_seconds_count",
    "time_per_output_token_seconds_count",
    "request_duration_seconds_count",
    "requests_running",
    "requests_waiting",
    "kv_cache_blocks_used",
    "kv_cache_blocks_total",
    "prompt_tokens_total",
    "generation_tokens_total",
)


def wait_until(condition: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + deadline_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return result


def stream(url: str, inputs: list, cancel_after: int | None = None) -> list[dict[str, Any]]:
    """One request over gRPC streaming; its responses as dicts (text, and on the final one the rest).
    With `cancel_after`, the client goes away after that many responses."""
    responses: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put(error or result))
    client.async_stream_infer(MODEL, inputs)
    received: list[dict[str, Any]] = []
    try:
        while True:
            item = responses.get(timeout=DEADLINE_S)
            if isinstance(item, Exception):
                raise item
            response = {"text": item.as_numpy("text_output")[0].decode()}
            reason = item.as_numpy("finish_reason")
            if reason is not None:
                response["finish_reason"] = reason[0].decode()
                response["prompt_tokens"] = int(item.as_numpy("prompt_tokens")[0])
                response["completion_tokens"] = int(item.as_numpy("completion_tokens")[0])
            received.append(response)
            if "finish_reason" in response or (cancel_after is not None and len(received) >= cancel_after):
                return received
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def http_post(server: TritonServer, path: str, body: dict[str, Any]) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{MODEL}/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sse_events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]


def scrape(server: TritonServer, model: str = MODEL) -> dict[str, float]:
    """This model's batchline_engine_* samples (without the prefix), summed over instances."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^batchline_engine_(\w+)\{([^}]*)\} (\S+)$", line)
        if match and f'model="{model}"' in match.group(2) and "le=" not in match.group(2):
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(3))
    return values


@pytest.fixture(scope="module")
def expected(served_inflight: BuildResult) -> dict[str, str]:
    loaded = load_model(served_inflight.weights_dir)
    return {prompt: generate(loaded, [prompt], [12], [0.0], [1.0], [[]])[0] for prompt in PROMPTS}


def test_streams_over_grpc_and_answers_http_generate_like_generate(
    triton: TritonServer, expected: dict[str, str]
) -> None:
    prompt = PROMPTS[0]
    streamed = stream(triton.grpc_url, triton_inputs(grpcclient, prompt, max_tokens=12, stream=True))
    assert len(streamed) > 2, "a streamed request gets several responses"
    assert "".join(item["text"] for item in streamed) == expected[prompt]
    final = streamed[-1]
    assert (final["finish_reason"], final["completion_tokens"], final["prompt_tokens"]) == ("length", 12, 11)
    (whole,) = stream(triton.grpc_url, triton_inputs(grpcclient, prompt, max_tokens=12))
    assert whole["text"] == expected[prompt] and whole["finish_reason"] == "length"

    status, body = http_post(triton, "generate", {"text_input": PROMPTS[1], "max_tokens": 12})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["text_output"] == expected[PROMPTS[1]]
    assert (answer["finish_reason"], answer["completion_tokens"]) == ("length", 12)

    status, body = http_post(triton, "generate_stream", {"text_input": PROMPTS[2], "max_tokens": 12, "stream": True})
    events = sse_events(body)
    assert status == 200 and len(events) > 2
    assert "".join(event["text_output"] for event in events) == expected[PROMPTS[2]]
    assert events[-1]["finish_reason"] == "length" and "error" not in events[-1]


def test_chat_messages_use_the_tokenizers_template(triton: TritonServer, served_inflight: BuildResult) -> None:
    loaded = load_model(served_inflight.weights_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]
    templated = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    (reply,) = generate(loaded, [templated], [8], [0.0], [1.0], [[]])
    status, body = http_post(triton, "generate", {"messages": json.dumps(messages), "max_tokens": 8})
    assert status == 200, body
    assert json.loads(body)["text_output"] == reply
    assert json.loads(body)["prompt_tokens"] == len(loaded.tokenizer(templated)["input_ids"])


def test_stop_strings_and_seeds(triton: TritonServer, expected: dict[str, str]) -> None:
    text = expected[PROMPTS[0]]
    stop = text[4:6]
    status, body = http_post(triton, "generate", {"text_input": PROMPTS[0], "max_tokens": 12, "stop": [stop]})
    assert status == 200, body
    assert json.loads(body)["text_output"] == text[: text.index(stop)]
    assert json.loads(body)["finish_reason"] == "stop"
    sampled = {"text_input": PROMPTS[1], "max_tokens": 12, "temperature": 0.9, "top_p": 0.95}
    first = json.loads(http_post(triton, "generate", {**sampled, "seed": 11})[1])["text_output"]
    again = json.loads(http_post(triton, "generate", {**sampled, "seed": 11})[1])["text_output"]
    assert first == again


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text_input": "Rivers " * 600, "max_tokens": 4}, "context"),
        ({"text_input": "Hello", "max_tokens": 0}, "max_tokens must be at least 1"),
        ({"text_input": "Hello", "temperature": -1.0}, "temperature must not be negative"),
        ({"text_input": "Hello", "messages": "[]"}, "either text_input or messages"),
        ({"messages": "not json"}, "messages is not JSON"),
    ],
    ids=["too-long", "max-tokens", "temperature", "both", "bad-messages"],
)
def test_a_bad_request_gets_a_clear_error_and_the_others_carry_on(
    triton: TritonServer, expected: dict[str, str], body: dict[str, Any], message: str
) -> None:
    other: list[tuple[int, str]] = []
    worker = threading.Thread(
        target=lambda: other.append(http_post(triton, "generate", {"text_input": PROMPTS[0], "max_tokens": 12}))
    )
    worker.start()
    status, answer = http_post(triton, "generate", body)
    worker.join(DEADLINE_S)
    assert status == 400 and message in json.loads(answer)["error"]
    assert other[0][0] == 200 and json.loads(other[0][1])["text_output"] == expected[PROMPTS[0]]


def test_a_client_that_goes_away_is_cancelled_and_its_cache_freed(triton: TritonServer) -> None:
    before = scrape(triton)["generation_tokens_total"]
    received = stream(
        triton.grpc_url, triton_inputs(grpcclient, PROMPTS[2], max_tokens=480, stream=True), cancel_after=3
    )
    assert len(received) == 3 and "finish_reason" not in received[-1]
    wait_until(
        lambda: scrape(triton)["requests_running"] == 0 and scrape(triton)["kv_cache_blocks_used"] == 0,
        "the engine to drop the cancelled request",
        deadline_s=10,
    )
    # It ended early: its tokens were counted when the engine cancelled it, far fewer than asked for.
    generated = wait_until(lambda: scrape(triton)["generation_tokens_total"] - before, "the count")
    assert 0 < generated < 480


def test_metrics_are_exported_and_move_under_load(triton: TritonServer) -> None:
    before = scrape(triton)
    assert set(METRICS) <= set(before), f"missing: {set(METRICS) - set(before)}"
    assert before["kv_cache_blocks_total"] > 0
    seen = {"requests_running": 0.0, "requests_waiting": 0.0, "kv_cache_blocks_used": 0.0}
    done = threading.Event()

    answers: list[dict[str, Any]] = []

    def ask(prompt: str) -> None:
        status, body = http_post(triton, "generate", {"text_input": prompt, "max_tokens": 60})
        assert status == 200, body
        answers.append(json.loads(body))

    def load() -> None:
        # Three times as many requests as the engine runs at once (max_batch_size 8): some wait for a while.
        workers = [threading.Thread(target=ask, args=(PROMPTS[i % 3],)) for i in range(24)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(DEADLINE_S)
        done.set()

    threading.Thread(target=load).start()
    while not done.is_set():
        now = scrape(triton)
        for name in seen:
            seen[name] = max(seen[name], now[name])
        time.sleep(0.02)
    after = scrape(triton)
    assert seen["requests_running"] > 0 and seen["kv_cache_blocks_used"] > 0
    assert seen["requests_waiting"] > 0
    for name in METRICS:
        if name.endswith(("_count", "_total")) and name != "kv_cache_blocks_total":
            assert after[name] > before[name], name
    # The counter holds what the clients got (a random model may end a request early at EOS).
    assert len(answers) == 24
    generated = sum(int(answer["completion_tokens"]) for answer in answers)
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == generated > 24 * 30


def test_two_instances_serve_and_unload_cleanly(tiny_chat: Path, tmp_path: Path) -> None:
    options = BuildOptions(
        mode=Mode.INT8_WEIGHT_ONLY,
        model_name=MODEL,
        quality=LOOSE,
        torch_threads=THREADS,
        instance_count=2,
        batching=BatchingOptions(max_batch_size=4),
        kv_cache_tokens=1024,
        max_batch_tokens=256,
    )
    result = build(tiny_chat, tmp_path, options)
    server = TritonServer([result.repository], extra_args=["--model-control-mode=explicit", f"--load-model={MODEL}"])
    with server:
        answers: list[tuple[int, str]] = []
        workers = [
            threading.Thread(
                target=lambda i=i: answers.append(
                    http_post(server, "generate", {"text_input": PROMPTS[i % 3], "max_tokens": 20})
                )
            )
            for i in range(6)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(DEADLINE_S)
        assert [status for status, _ in answers] == [200] * 6
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        assert {f'instance="{MODEL}_0_{index}"' in text for index in (0, 1)} == {True}
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.unload_model(MODEL)
        wait_until(lambda: not client.is_model_ready(MODEL), "the model to unload", deadline_s=30)
        client.close()
        assert wait_until(
            lambda: server.log_tail(200).count("batchline engine stopped") == 2, "both engines to stop", 30
        )
        started = time.monotonic()
    assert time.monotonic() - started < 15, "tritonserver took too long to exit"
