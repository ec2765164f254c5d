"""OpenAI's request and response bodies: validation into plain requests, and the answers' JSON.

Pure functions; `BadRequest` carries what becomes a 400 with OpenAI's error body.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_STOP = 4


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Generation:
    """One text-generation request, whichever endpoint it came through."""

    model: str
    chat: bool
    prompt: str = ""
    messages: tuple[Mapping[str, Any], ...] = ()
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: tuple[str, ...]
    base64: bool = False


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    return model


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a number", name)
    if not low <= value <= high:
        raise BadRequest(f"{value} is out of range for {name}: it must lie in [{low:g}, {high:g}]", name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer", name)
    if not low <= value <= high:
        raise BadRequest(f"{value} is out of range for {name}: it must lie in [{low}, {high}]", name)
    return value


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", name)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise BadRequest("stop must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP:
        raise BadRequest(f"stop takes at most {MAX_STOP} sequences", "stop")
    return tuple(item for item in items if item)


def _content(message: Mapping[str, Any], index: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest("only text content parts are supported", f"messages[{index}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise BadRequest("content must be a string or a list of text parts", f"messages[{index}].content")


def _messages(body: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise BadRequest("each message must be an object", f"messages[{index}]")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise BadRequest(f"unknown role {role!r}", f"messages[{index}].role")
        out.append({"role": role, "content": _content(message, index)})
    return tuple(out)


def _common(body: Mapping[str, Any], chat: bool) -> dict[str, Any]:
    n = _integer(body, "n", 1, 128)
    if n not in (None, 1):
        raise BadRequest("only n=1 is supported", "n")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise BadRequest("logprobs are not supported", "logprobs")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, Mapping):
            raise BadRequest("stream_options must be an object", "stream_options")
        if not stream:
            raise BadRequest("stream_options is only allowed when stream is true", "stream_options")
        include_usage = _flag(options, "include_usage")
    max_tokens = _integer(body, "max_tokens", 1, 1 << 20)
    if chat:
        max_completion = _integer(body, "max_completion_tokens", 1, 1 << 20)
        max_tokens = max_completion if max_completion is not None else max_tokens
    elif max_tokens is None:
        max_tokens = 16  # the completions API's documented default
    return {
        "model": _model(body),
        "stream": stream,
        "include_usage": include_usage,
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 0.0, 2.0),
        "top_p": _number(body, "top_p", 0.0, 1.0),
        "seed": _integer(body, "seed", -(1 << 63), (1 << 63) - 1),
        "stop": _stop(body),
    }


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest("the request body must be a JSON object")
    return body


def parse_chat(body: Any) -> Generation:
    body = _object(body)
    common = _common(body, chat=True)
    return Generation(chat=True, messages=_messages(body), **common)


def parse_completion(body: Any) -> Generation:
    body = _object(body)
    common = _common(body, chat=False)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and all(isinstance(item, str) for item in prompt):
        raise BadRequest("only one prompt per request is supported", "prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (token arrays are not supported)", "prompt")
    if not prompt:
        raise BadRequest("prompt must not be empty", "prompt")
    if _flag(body, "echo"):
        raise BadRequest("echo is not supported", "echo")
    if _integer(body, "best_of", 1, 128) not in (None, 1):
        raise BadRequest("only best_of=1 is supported", "best_of")
    if body.get("suffix"):
        raise BadRequest("suffix is not supported", "suffix")
    return Generation(chat=False, prompt=prompt, **common)


def parse_embeddings(body: Any) -> EmbeddingRequest:
    body = _object(body)
    model = _model(body)
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise BadRequest("input must be a string or a non-empty list of strings (token arrays are not supported)",
                         "input")
    if any(not text for text in texts):
        raise BadRequest("input must not contain empty strings", "input")
    if len(texts) > 2048:
        raise BadRequest("input takes at most 2048 strings", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest("encoding_format must be float or base64", "encoding_format")
    if body.get("dimensions") is not None:
        raise BadRequest("dimensions is not supported", "dimensions")
    return EmbeddingRequest(model, tuple(texts), base64=encoding == "base64")


def plain_prompt(messages: tuple[Mapping[str, Any], ...]) -> str:
    """For a model without a `messages` input (no chat template): the conversation as text."""
    lines = [f"{message['role']}: {message['content']}" for message in messages]
    return "\n".join([*lines, "assistant:"])


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChunkWriter:
    """The `data: ...` lines of one streamed answer, in OpenAI's chunk format, as bytes."""

    def __init__(self, request: Generation, request_id: str, created: int) -> None:
        self.chat = request.chat
        self.include_usage = request.include_usage
        self.object = "chat.completion.chunk" if request.chat else "text_completion"
        head = {"id": request_id, "object": self.object, "created": created, "model": request.model}
        self._head = json.dumps(head)[:-1]  # without its closing brace; the choices follow
        self._usage = ', "usage": null' if request.include_usage else ""

    def _event(self, choices: str, tail: str = "") -> bytes:
        return f"data: {self._head}, \"choices\": [{choices}]{tail}}}\n\n".encode()

    def first(self) -> bytes | None:
        """Chat answers open with the assistant's role."""
        if not self.chat:
            return None
        return self._event('{"index": 0, "delta": {"role": "assistant", "content": ""}, '
                           '"logprobs": null, "finish_reason": null}', self._usage)

    def text(self, text: str, finish_reason: str | None = None) -> bytes:
        reason = json.dumps(finish_reason)
        if self.chat:
            delta = json.dumps({"content": text}) if text else "{}"
            choice = f'{{"index": 0, "delta": {delta}, "logprobs": null, "finish_reason": {reason}}}'
        else:
            choice = f'{{"index": 0, "text": {json.dumps(text)}, "logprobs": null, "finish_reason": {reason}}}'
        return self._event(choice, self._usage)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self._event("", f', "usage": {json.dumps(usage(prompt_tokens, completion_tokens))}')


DONE = b"data: [DONE]\n\n"


def error_event(message: str, code: str | None = None) -> bytes:
    return f"data: {json.dumps(error_body(500, message, code=code))}\n\n".encode()


def completion_body(request: Generation, request_id: str, created: int, text: str, finish_reason: str,
                    prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    if request.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": request_id,
        "object": "chat.completion" if request.chat else "text_completion",
        "created": created,
        "model": request.model,
        "choices": [choice],
        "usage": usage(prompt_tokens, completion_tokens),
    }
