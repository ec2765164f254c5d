"""Built repositories served by a real tritonserver, over HTTP and gRPC."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from model_repo_builder import TritonServer
from model_repo_builder.builder import BuildResult
from model_repo_builder.runtime import embed, generate, load_model

pytestmark = [pytest.mark.triton, pytest.mark.torch]

PROMPTS = ["The city council met", "Computers store numbers", "A good recipe for bread"]


def _inputs(module, prompt: str, max_tokens: int | None = None, **extra: object) -> list:
    text = module.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[prompt.encode()]], dtype=np.object_))
    tensors = [text]
    if max_tokens is not None:
        tokens = module.InferInput("max_tokens", [1, 1], "INT32")
        tokens.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
        tensors.append(tokens)
    for name, value in extra.items():
        if isinstance(value, list):
            tensor = module.InferInput(name, [1, len(value)], "BYTES")
            tensor.set_data_from_numpy(np.array([[item.encode() for item in value]], dtype=np.object_))
        else:
            tensor = module.InferInput(name, [1, 1], "FP32")
            tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
        tensors.append(tensor)
    return tensors


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
        assert _text(http.infer("llama", _inputs(httpclient, prompt, 10))) == expected
        assert _text(grpc.infer("llama", _inputs(grpcclient, prompt, 10))) == expected
    stop = next(char for char in expected[1:] if char.isascii() and char.isalnum())
    stopped = _text(http.infer("llama", _inputs(httpclient, PROMPTS[-1], 10, stop=[stop])))
    assert stopped == expected[: expected.index(stop)]
    sampled = _text(grpc.infer("llama", _inputs(grpcclient, PROMPTS[0], 6, temperature=1.0, top_p=0.9)))
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
            served = client.infer("minilm", _inputs(module, prompt)).as_numpy("embedding")
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
                outputs.append(_text(own.infer("llama", _inputs(httpclient, prompt, 8))))
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
        (_inputs(httpclient, "", 4), "text_input must not be empty"),
        (_inputs(httpclient, "Hello", 0), "max_tokens must be at least 1"),
        (_inputs(httpclient, "Hello", 4, temperature=-1.0), "temperature must not be negative"),
        (_inputs(httpclient, "Hello", 4, top_p=1.5), "top_p must lie in"),
        (_inputs(httpclient, "Hello", 4)[1:], "text_input is required"),
    ],
    ids=["empty", "max-tokens", "temperature", "top-p", "no-text"],
)
def test_bad_requests_get_clear_errors(triton: TritonServer, inputs: list, message: str) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    with pytest.raises(InferenceServerException, match=message):
        client.infer("llama", inputs)
    assert isinstance(_text(client.infer("llama", _inputs(httpclient, "Hello", 2))), str)
    client.close()
