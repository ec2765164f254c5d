"""Upstream faults and difficult clients: a Triton killed mid-stream, no upstream at all, a full wait
queue, a client that stops reading."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import openai
import pytest

from model_repo_builder.triton_server import TritonServer, free_port
from tests.gateway.conftest import EchoRepository, GatewayProcess, kill, metric_value, wait_for

pytestmark = pytest.mark.triton


def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def second_triton(echo_repository: EchoRepository) -> Iterator[TritonServer]:
    with TritonServer([echo_repository.path]) as server:
        yield server


def test_a_triton_killed_mid_stream_ends_its_streams_with_an_error_and_traffic_moves_on(
    gateway_factory: Callable[..., GatewayProcess], triton: TritonServer, second_triton: TritonServer
) -> None:
    gateway = gateway_factory("--upstream", f"slow={second_triton.grpc_url},{triton.grpc_url}")
    api = client(gateway)
    outcomes: dict[int, str] = {}
    first_tokens = threading.Barrier(3, timeout=30)

    def stream(index: int) -> None:
        text = ""
        try:
            chunks = api.completions.create(model="slow", prompt="repeat: " + "word " * 5, max_tokens=100,
                                            stream=True)
            for number, chunk in enumerate(chunks):
                text += chunk.choices[0].text if chunk.choices else ""
                if number == 0:
                    first_tokens.wait()
            outcomes[index] = "complete" if len(text.split()) == 100 else f"short: {text!r}"
        except openai.APIError as exc:
            outcomes[index] = f"error: {exc.message}"

    threads = [threading.Thread(target=stream, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    first_tokens.wait()  # both streams have begun, one on each replica (fewest in flight)
    kill(second_triton)
    for thread in threads:
        thread.join(60)
    assert sorted(outcome.split(":")[0] for outcome in outcomes.values()) == ["complete", "error"], outcomes
    # Later requests go to the surviving replica, and all succeed.
    for _ in range(4):
        answer = api.completions.create(model="slow", prompt="still here", max_tokens=5)
        assert answer.choices[0].text == "still here"
    text = gateway.metrics()
    assert metric_value(text, "batchline_gateway_requests_total", model="slow", code="502") == 1
    assert metric_value(text, "batchline_gateway_requests_in_flight", model="slow") == 0


def test_with_no_upstream_left_requests_get_503_after_the_hold_timeout(
    gateway_factory: Callable[..., GatewayProcess]
) -> None:
    gone = f"127.0.0.1:{free_port()}"  # nothing listens there any more
    gateway = gateway_factory("--upstream", f"echo={gone}", "--hold-timeout", "2")
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        client(gateway).chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}],
                                                stream=True)
    elapsed = time.monotonic() - started
    assert raised.value.status_code == 503
    assert raised.value.response.headers.get("Retry-After")
    assert "became ready" in raised.value.message
    assert 1.9 <= elapsed < 10


def test_a_full_wait_queue_answers_429_with_retry_after(
    gateway_factory: Callable[..., GatewayProcess], triton: TritonServer
) -> None:
    gateway = gateway_factory("--upstream", f"slow={triton.grpc_url}", "--max-in-flight-per-replica", "1",
                              "--max-waiting", "1", "--hold-timeout", "60")
    api = client(gateway)
    busy = api.completions.create(model="slow", prompt="repeat: x", max_tokens=50, stream=True)  # ~2 s
    next(iter(busy))
    held: dict[str, str] = {}
    waiter = threading.Thread(target=lambda: held.update(
        text=api.completions.create(model="slow", prompt="held one", max_tokens=5).choices[0].text))
    waiter.start()
    wait_for(lambda: metric_value(gateway.metrics(), "batchline_gateway_requests_waiting", model="slow") == 1,
             10, "the second request to be held")
    with pytest.raises(openai.RateLimitError) as raised:
        api.completions.create(model="slow", prompt="one too many", max_tokens=5)
    assert raised.value.response.headers.get("Retry-After") == "1"
    for _ in busy:
        pass
    waiter.join(30)
    assert held == {"text": "held one"}  # the held request ran once the replica had room


def test_a_client_that_stops_reading_is_dropped_and_its_generation_cancelled(
    gateway_factory: Callable[..., GatewayProcess], triton: TritonServer, echo_repository: EchoRepository
) -> None:
    gateway = gateway_factory("--upstream", f"fast={triton.grpc_url}", "--client-write-timeout", "1")
    before = echo_repository.cancellations()
    parts = urlsplit(gateway.url)
    body = json.dumps({"model": "fast", "prompt": "repeat: " + "y" * 2000, "stream": True,
                       "max_tokens": 100000}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    sock.sendall(request)
    try:
        # The client reads nothing: 200 MB of answer cannot fit in the socket buffers, so the gateway's
        # writes stall, it drops the client after 1 s and cancels the generation.
        wait_for(lambda: echo_repository.cancellations() > before, 60, "the generation to be cancelled")
        text = gateway.metrics()
        assert metric_value(text, "batchline_gateway_upstream_cancellations_total", model="fast") == 1
        assert metric_value(text, "batchline_gateway_requests_in_flight", model="fast") == 0
        assert metric_value(text, "batchline_gateway_requests_total", model="fast", code="499") == 1
    finally:
        sock.close()
    # and the gateway still serves others
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("POST", "/v1/completions", body=json.dumps({"model": "fast", "prompt": "ok"}),
                       headers={"Content-Type": "application/json"})
    assert connection.getresponse().status == 200


def test_a_model_that_sends_nothing_times_out_with_504_and_is_cancelled(
    gateway_factory: Callable[..., GatewayProcess], triton: TritonServer, echo_repository: EchoRepository
) -> None:
    gateway = gateway_factory("--upstream", f"stuck={triton.grpc_url}", "--upstream-timeout", "1")
    before = echo_repository.cancellations()
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        client(gateway).chat.completions.create(model="stuck", messages=[{"role": "user", "content": "a b"}],
                                                stream=True)
    assert raised.value.status_code == 504 and time.monotonic() - started < 3.5
    wait_for(lambda: echo_repository.cancellations() > before, 15, "the silent generation to be cancelled")


def _successes(server: TritonServer, model: str) -> int:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics(model)["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])
    finally:
        client.close()


def test_concurrent_streams_spread_over_replicas_by_requests_in_flight(
    gateway_factory: Callable[..., GatewayProcess], triton: TritonServer, second_triton: TritonServer
) -> None:
    gateway = gateway_factory("--upstream", f"slow={triton.grpc_url},{second_triton.grpc_url}")
    api = client(gateway)
    before = (_successes(triton, "slow"), _successes(second_triton, "slow"))
    texts: list[str] = []

    def stream() -> None:
        chunks = api.completions.create(model="slow", prompt="a b c d e f g h", max_tokens=8, stream=True)
        texts.append("".join(c.choices[0].text for c in chunks))

    threads = [threading.Thread(target=stream) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert texts == ["a b c d e f g h"] * 6
    after = (_successes(triton, "slow"), _successes(second_triton, "slow"))
    # Overlapping 0.3 s streams go to the replica with fewer in flight (ties alternate): 3 each when all
    # six overlap, never all on one; a thread starting late on a loaded machine may shift one.
    served = (after[0] - before[0], after[1] - before[1])
    assert sum(served) == 6 and min(served) >= 2, served


def test_a_stopping_gateway_turns_unready_and_finishes_its_streams(
    gateway_factory: Callable[..., GatewayProcess], triton: TritonServer
) -> None:
    gateway = gateway_factory("--upstream", f"slow={triton.grpc_url}", "--drain-seconds", "1")

    def readyz() -> int | None:
        try:
            with urllib.request.urlopen(f"{gateway.url}/readyz", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError):
            return None

    assert readyz() == 200
    words = [f"w{index}" for index in range(60)]  # 2.4 s of tokens: past the drain
    chunks = iter(client(gateway).completions.create(model="slow", prompt=" ".join(words), max_tokens=60,
                                                     stream=True))
    text = next(chunks).choices[0].text
    gateway.process.send_signal(signal.SIGTERM)  # what Kubernetes does to a pod it removes
    wait_for(lambda: readyz() == 503, 5, "/readyz to say 503 while draining")
    text += "".join(chunk.choices[0].text for chunk in chunks)
    assert text == " ".join(words)  # the stream in progress finished after the port closed
    assert gateway.process.wait(15) == 0
