"""Built repositories served by a real tritonserver, over HTTP and gRPC."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from batchline_tools.triton_inputs import triton_inputs
from model_repo_builder import TritonServer
from model_repo_builder.builder import BuildResult
from model_repo_builder.runtime import embed, generate, load_model

pytestmark = [pytest.mark.triton, pytest.mark.torch]

PROMPTS = ["The city council met", "Computers store numbers", "A good recipe for bread"]


def _text(result) -> str:
    return str(result.as_numpy("text_output").reshape(-1)[0].decode())


def test_generation_over_http_and_grpc_matches_the_in_process_model(
    triton: TritonServer, served_llama: BuildResult
) -> None:
    loaded = load_model(served_llama.weights_dir)
    http = httpclient.InferenceServerClient(triton.http_url)
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    for prompt in PROMPTS:
        (expected,) = generate(loaded, [prompt], [10], [0.0], [1.0], [[]])
        assert _text(http.infer("llama", triton_inputs(httpclient, prompt, batched=True, max_tokens=10))) == expected
        assert _text(grpc.infer("llama", triton_inputs(grpcclient, prompt, batched=True, max_tokens=10))) == expected
    stop = next(char for char in expected[1:] if char.isascii() and char.isalnum())
    stopped = _text(
        http.infer("llama", triton_inputs(httpclient, PROMPTS[-1], batched=True, max_tokens=10, stop=[stop]))
    )
    assert stopped == expected[: expected.index(stop)]
    sampled = _text(
        grpc.infer(
            "llama", triton_inputs(grpcclient, PROMPTS[0], batched=True, max_tokens=6, temperature=1.0, top_p=0.9)
        )
    )
    assert isinstance(sampled, str)
    http.close()
    grpc.close()


def test_embeddings_match_the_in_process_model(triton: TritonServer, served_minilm: BuildResult) -> None:
    loaded = load_model(served_minilm.weights_dir)
    expected = embed(loaded, PROMPTS)
    http = httpclient.InferenceServerClient(triton.http_url)
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    for prompt, vector in zip(PROMPTS, expected, strict=True):
        for module, client in ((httpclient, http), (grpcclient, grpc)):
            served = client.infer("minilm", triton_inputs(module, prompt, batched=True)).as_numpy("embedding")
            assert served.shape == (1, 384)
            np.testing.assert_allclose(served[0], vector, atol=1e-5)
            assert abs(np.linalg.norm(served) - 1.0) < 1e-4
    http.close()
    grpc.close()


def _counts(client: httpclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_concurrent_requests_are_batched(triton: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    inferences, executions = _counts(client, "llama")
    outputs: list[str] = []

    def worker(index: int) -> None:
        # tritonclient.http is not thread-safe: one client per thread.
        own = httpclient.InferenceServerClient(triton.http_url)
        try:
            for round_ in range(3):
                prompt = PROMPTS[(index + round_) % len(PROMPTS)]
                outputs.append(_text(own.infer("llama", triton_inputs(httpclient, prompt, batched=True, max_tokens=8))))
        finally:
            own.close()

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outputs) == 24
    new_inferences, new_executions = _counts(client, "llama")
    client.close()
    assert new_inferences - inferences == 24
    assert new_executions - executions < 24


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (triton_inputs(httpclient, "", batched=True, max_tokens=4), "text_input must not be empty"),
        (triton_inputs(httpclient, "Hello", batched=True, max_tokens=0), "max_tokens must be at least 1"),
        (
            triton_inputs(httpclient, "Hello", batched=True, max_tokens=4, temperature=-1.0),
            "temperature must not be negative",
        ),
        (triton_inputs(httpclient, "Hello", batched=True, max_tokens=4, top_p=1.5), "top_p must lie in"),
        (triton_inputs(httpclient, "Hello", batched=True, max_tokens=4)[1:], "text_input is required"),
    ],
    ids=["empty", "max-tokens", "temperature", "top-p", "no-text"],
)
def test_bad_requests_get_clear_errors(triton: TritonServer, inputs: list, message: str) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    with pytest.raises(InferenceServerException, match=message):
        client.infer("llama", inputs)
    assert isinstance(_text(client.infer("llama", triton_inputs(httpclient, "Hello", batched=True, max_tokens=2))), str)
    client.close()
