"""A decoupled Triton python model that follows Batchline's streaming text-generation contract.

It "generates" by echoing the prompt's words (the last user message for `messages`), one word per
response when `stream` is true, with `token_delay_ms` (a model parameter) between words. A prompt
that starts with `fail:` sends one word and then an error response; `broken:` two words and then a
final response with finish reason `error` and an `error` output (as the engine ends a request on an
internal failure); `repeat:` repeats its words until max_tokens. Cancelled requests are written,
one line each, to the file named by the `events_file` parameter, so tests can see them.
"""

import os
import site
import sys

# The python backend stub embeds an interpreter that ignores PYTHONPATH; honour it (for numpy).
for _path in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path not in sys.path:
        site.addsitedir(_path)

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bytes(name, text):
    return pb_utils.Tensor(name, np.array([text.encode("utf-8")], dtype=np.object_))


def _int(name, value):
    return pb_utils.Tensor(name, np.array([value], dtype=np.int32))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.delay = float(params.get("token_delay_ms", "0")) / 1000.0
        self.events_file = params.get("events_file") or None
        self.lock = threading.Lock()

    def _event(self, line):
        if self.events_file:
            with self.lock, open(self.events_file, "a") as out:
                out.write(line + "\n")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            threading.Thread(target=self._run, args=(request, sender), daemon=True).start()
        return None

    def _run(self, request, sender):
        try:
            self._generate(request, sender)
        except Exception as exc:  # a bad request: one error response, then done
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _generate(self, request, sender):
        text_input = _input(request, "text_input")
        messages = _input(request, "messages")
        if messages is not None:
            chat = json.loads(_text(messages[0]))
            prompt_words = [word for m in chat for word in str(m.get("content", "")).split()]
            users = [m for m in chat if m.get("role") == "user"] or chat
            source = str(users[-1].get("content", ""))
        elif text_input is not None:
            source = _text(text_input[0])
            prompt_words = source.split()
        else:
            raise ValueError("text_input or messages is required")
        stream = _input(request, "stream")
        stream = bool(stream[0]) if stream is not None else False
        max_tokens = _input(request, "max_tokens")
        max_tokens = int(max_tokens[0]) if max_tokens is not None else 16
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        stops = [_text(item) for item in (_input(request, "stop") if _input(request, "stop") is not None else [])]
        fail = source.startswith("fail:")
        broken = source.startswith("broken:")  # ends like the engine does on an internal error
        repeat = source.startswith("repeat:")
        words = source.split() or ["."]
        text, sent, finish, count = "", 0, "length", 0
        for index in range(max_tokens):
            if index >= len(words) and not repeat:
                finish = "stop"
                break
            if request.is_cancelled():
                self._event("cancelled")
                sender.send(
                    pb_utils.InferenceResponse(output_tensors=[_bytes("text_output", ""),
                                                               _bytes("finish_reason", "cancelled")]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                return
            if broken and index == 2:
                sender.send(
                    pb_utils.InferenceResponse(output_tensors=[
                        _bytes("text_output", ""), _bytes("finish_reason", "error"),
                        _int("prompt_tokens", len(prompt_words)), _int("completion_tokens", count),
                        _bytes("error", "the KV cache ran out"),
                    ]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                return
            if fail and index == 1:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("the engine failed")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            if self.delay:
                time.sleep(self.delay)
            text += (" " if index else "") + words[index % len(words)]
            count += 1
            cut = min((text.find(stop) for stop in stops if stop and stop in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            if stream and index + 1 < (max_tokens if repeat else min(max_tokens, len(words))):
                sender.send(pb_utils.InferenceResponse(output_tensors=[_bytes("text_output", text[sent:]),
                                                                       _bytes("finish_reason", "")]))
                sent = len(text)
        final = text[sent:] if stream else text
        sender.send(
            pb_utils.InferenceResponse(output_tensors=[
                _bytes("text_output", final), _bytes("finish_reason", finish),
                _int("prompt_tokens", len(prompt_words)), _int("completion_tokens", count),
            ]),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )
