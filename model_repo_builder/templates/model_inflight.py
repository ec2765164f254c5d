"""Triton python-backend model written by Batchline's model_repo_builder: the in-flight engine.

A decoupled model: `execute` hands each request to the continuous-batching engine
(batchline_engine.py, copied next to this file) and returns at once; the engine's pump thread sends
the responses (a streamed request gets one per piece of new text, then a final one). The contract
is in docs/builder.md, "The streaming contract". Each model instance loads its own copy of the
weights and runs its own engine with its own KV cache.
"""

import json
import os
import site
import sys
import threading
import time

# The python backend stub embeds an interpreter that ignores PYTHONPATH; honour it here so that a
# virtualenv's packages (torch, transformers, torchao) can be used.
for _path in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path not in sys.path:
        site.addsitedir(_path)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import batchline_engine as engine_lib  # noqa: E402
import batchline_runtime as runtime  # noqa: E402
import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

WARMUP_TIMEOUT_S = 300.0
FINALIZE_TIMEOUT_S = 30.0
TTFT_BUCKETS = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
TPOT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
DURATION_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0]


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bytes_tensor(name, text):
    return pb_utils.Tensor(name, np.array([text.encode("utf-8")], dtype=np.object_))


class _Metrics:
    """The engine's figures on Triton's metrics port (custom metrics of the python backend)."""

    def __init__(self, labels):
        # A family must outlive its metrics: keep them all.
        self.families: list = []

        def family(name, description, kind):
            self.families.append(pb_utils.MetricFamily(name=name, description=description, kind=kind))
            return self.families[-1]

        kinds = pb_utils.MetricFamily
        histogram, gauge, counter = kinds.HISTOGRAM, kinds.GAUGE, kinds.COUNTER
        self.ttft = family(
            "batchline_engine_time_to_first_token_seconds", "Time from request arrival to its first token", histogram
        ).Metric(labels=labels, buckets=TTFT_BUCKETS)
        self.tpot = family(
            "batchline_engine_time_per_output_token_seconds",
            "Time between a request's output tokens after the first",
            histogram,
        ).Metric(labels=labels, buckets=TPOT_BUCKETS)
        self.duration = family(
            "batchline_engine_request_duration_seconds",
            "Time from request arrival to its final response (end to end, unlike nv_inference_request_duration_us)",
            histogram,
        ).Metric(labels=labels, buckets=DURATION_BUCKETS)
        self.running = family("batchline_engine_requests_running", "Requests in the engine's running batch", gauge)
        self.running = self.running.Metric(labels=labels)
        self.waiting = family("batchline_engine_requests_waiting", "Requests queued for the running batch", gauge)
        self.waiting = self.waiting.Metric(labels=labels)
        self.blocks_used = family("batchline_engine_kv_cache_blocks_used", "KV-cache blocks in use", gauge)
        self.blocks_used = self.blocks_used.Metric(labels=labels)
        self.blocks_total = family("batchline_engine_kv_cache_blocks_total", "KV-cache blocks allocated at load", gauge)
        self.blocks_total = self.blocks_total.Metric(labels=labels)
        self.prompt_tokens = family(
            "batchline_engine_prompt_tokens_total", "Prompt tokens of finished requests", counter
        )
        self.prompt_tokens = self.prompt_tokens.Metric(labels=labels)
        self.generation_tokens = family(
            "batchline_engine_generation_tokens_total", "Tokens generated, finished requests", counter
        )
        self.generation_tokens = self.generation_tokens.Metric(labels=labels)

    def first_token(self, seconds):
        self.ttft.observe(seconds)

    def output_token(self, seconds):
        self.tpot.observe(seconds)

    def finished(self, prompt_tokens, completion_tokens, seconds):
        self.duration.observe(seconds)
        self.prompt_tokens.increment(prompt_tokens)
        self.generation_tokens.increment(completion_tokens)

    def stats(self, stats):
        self.running.set(stats.running)
        self.waiting.set(stats.waiting)
        self.blocks_used.set(stats.kv_blocks_used)
        self.blocks_total.set(stats.kv_blocks_total)


class _Responder:
    """Turns one request's engine updates into Triton responses (streamed deltas or one response)."""

    def __init__(self, sender, stream):
        self.sender = sender
        self.stream = stream
        self.parts = []

    def __call__(self, update):
        if not update.finished:
            if self.stream:
                self.sender.send(pb_utils.InferenceResponse(output_tensors=[_bytes_tensor("text_output", update.text)]))
            else:
                self.parts.append(update.text)
            return
        text = update.text if self.stream else "".join(self.parts) + update.text
        tensors = [
            _bytes_tensor("text_output", text),
            _bytes_tensor("finish_reason", update.finish_reason),
            pb_utils.Tensor("prompt_tokens", np.array([update.prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor("completion_tokens", np.array([update.completion_tokens], dtype=np.int32)),
        ]
        if update.error:
            tensors.append(_bytes_tensor("error", update.error))
        self.sender.send(
            pb_utils.InferenceResponse(output_tensors=tensors), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        )


class TritonPythonModel:
    def initialize(self, args):
        loaded, params = runtime.load_instance(args, os.path.dirname(os.path.abspath(__file__)))
        self.default_max_tokens = int(params.get("default_max_tokens", "64"))
        labels = {
            "model": args["model_name"],
            "version": str(args["model_version"]),
            "instance": args["model_instance_name"],
        }
        self.metrics = _Metrics(labels)
        self.engine = engine_lib.Engine(
            loaded.model,
            loaded.tokenizer,
            kv_cache_tokens=int(params["kv_cache_tokens"]),
            max_batch_tokens=int(params["max_batch_tokens"]),
            max_requests=int(params["max_running_requests"]),
            observer=self.metrics,
        )
        try:
            self.metrics.stats(self.engine.stats())
            if params.get("warmup", "true") == "true":
                self._warm_up()
        except BaseException:
            self.engine.close(timeout=FINALIZE_TIMEOUT_S)
            raise

    def _warm_up(self):
        done = threading.Event()
        outcome = []

        def sink(update):
            if update.finished:
                outcome.append(update)
                done.set()

        self.engine.submit(self.engine.encode("Hello"), engine_lib.Sampling(max_tokens=2), sink)
        if not done.wait(WARMUP_TIMEOUT_S) or outcome[0].error:
            raise pb_utils.TritonModelException(f"engine warm-up failed: {outcome[0].error if outcome else 'timeout'}")

    def _parse(self, request):
        text_input = _optional(request, "text_input")
        messages = _optional(request, "messages")
        if (text_input is None) == (messages is None):
            raise engine_lib.RequestError("send either text_input or messages (one string)")
        if text_input is not None:
            if text_input.size != 1:
                raise engine_lib.RequestError("text_input holds one string")
            prompt = _text(text_input[0])
            if not prompt:
                raise engine_lib.RequestError("text_input must not be empty")
            ids = self.engine.encode(prompt)
        else:
            try:
                chat = json.loads(_text(messages[0]))
            except ValueError as exc:
                raise engine_lib.RequestError(f"messages is not JSON: {exc}") from exc
            if not isinstance(chat, list) or not chat or not all(isinstance(item, dict) for item in chat):
                raise engine_lib.RequestError("messages must be a JSON list of {role, content} objects")
            ids = self.engine.encode(messages=chat)
        max_tokens = _optional(request, "max_tokens")
        temperature = _optional(request, "temperature")
        top_p = _optional(request, "top_p")
        seed = _optional(request, "seed")
        stop = _optional(request, "stop")
        stream = _optional(request, "stream")
        sampling = engine_lib.Sampling(
            max_tokens=int(max_tokens[0]) if max_tokens is not None else self.default_max_tokens,
            temperature=float(temperature[0]) if temperature is not None else 0.0,
            top_p=float(top_p[0]) if top_p is not None else 1.0,
            seed=int(seed[0]) if seed is not None else None,
            stop=tuple(_text(item) for item in stop if _text(item)) if stop is not None else (),
        )
        return ids, sampling, bool(stream[0]) if stream is not None else False

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                ids, sampling, stream = self._parse(request)
                self.engine.submit(ids, sampling, _Responder(sender, stream), is_cancelled=request.is_cancelled)
            except (engine_lib.RequestError, engine_lib.EngineUnavailableError, UnicodeDecodeError) as exc:
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        return None

    def finalize(self):
        started = time.monotonic()
        self.engine.close(timeout=FINALIZE_TIMEOUT_S)
        pb_utils.Logger.log_info(f"batchline engine stopped in {time.monotonic() - started:.2f} s")
