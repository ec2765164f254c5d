"""The upstream: Triton's gRPC API (tritonclient's generated stubs on grpc.aio).

Generation goes over the bidirectional `ModelStreamInfer` stream, which decoupled models need: one
stream per request, held open until the final response (`triton_final_response`), and cancelled
when the client goes away, which Triton passes on to the model as a cancelled request. Models that
are not decoupled (and embeddings) use the unary `ModelInfer`. Inputs are encoded to the shapes and
types the model's config declares, so the gateway follows the engine's config as it changes, and
optional inputs a model does not declare are left out.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from batchline.gateway.openai_api import Generation, plain_prompt

DTYPES = {
    "TYPE_STRING": "BYTES",
    "TYPE_BOOL": "BOOL",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_UINT32": "UINT32",
}
_PACK = {"BOOL": "?", "INT32": "i", "INT64": "q", "FP32": "f", "FP64": "d", "UINT32": "I"}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE}


class UpstreamError(Exception):
    """Triton failed the request. `retryable`: nothing reached the model (connection refused, the
    server going away, an engine not accepting requests), so another replica may take it;
    `queue_full`: Triton's queue rejected it; `bad_request`: the model refused the request itself
    (a prompt too long for the context, messages its chat template cannot take)."""

    def __init__(self, message: str, *, retryable: bool = False, queue_full: bool = False,
                 bad_request: bool = False, timeout: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.queue_full = queue_full
        self.bad_request = bad_request
        self.timeout = timeout  # the model sent nothing within the upstream timeout


# How the engine words what it refuses (model_repo_builder's RequestError and EngineUnavailableError).
_REFUSALS = ("prompt", "chat template", "messages", "text_input", "max_tokens", "temperature", "top_p")
_UNAVAILABLE = ("engine is stopped", "not accepting requests", "did not start")


def in_band_error(message: str, started: bool) -> UpstreamError:
    """An error response from the model (not a gRPC failure)."""
    lowered = message.lower()
    if "queue size" in lowered:
        return UpstreamError(message, queue_full=True)
    if not started and any(phrase in lowered for phrase in _UNAVAILABLE):
        return UpstreamError(message, retryable=True)
    return UpstreamError(message, bad_request=not started and any(phrase in lowered for phrase in _REFUSALS))


def _rpc_error(exc: grpc.aio.AioRpcError, started: bool) -> UpstreamError:
    details = exc.details() or str(exc.code())
    queue_full = "queue size" in details.lower()
    retryable = not started and exc.code() in RETRYABLE and not queue_full
    timeout = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    return UpstreamError(f"upstream {exc.code().name}: {details}", retryable=retryable, queue_full=queue_full,
                         timeout=timeout)


@dataclass(frozen=True)
class TensorShape:
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelShape:
    """What the gateway needs of a model's config."""

    inputs: Mapping[str, TensorShape]
    max_batch_size: int
    decoupled: bool

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        inputs = {
            tensor.name: TensorShape(DTYPES.get(model_config_pb2.DataType.Name(tensor.data_type), "BYTES"),
                                     tuple(tensor.dims))
            for tensor in config.input
        }
        return cls(inputs, config.max_batch_size, config.model_transaction_policy.decoupled)

    def shape(self, name: str, count: int, batch: int = 1) -> list[int]:
        dims = [count if dim < 0 else dim for dim in self.inputs[name].dims]
        return ([batch] if self.max_batch_size > 0 else []) + dims


def _encode(datatype: str, values: Sequence[Any]) -> bytes:
    if datatype == "BYTES":
        out = bytearray()
        for value in values:
            raw = value if isinstance(value, bytes) else str(value).encode()
            out += struct.pack("<I", len(raw)) + raw
        return bytes(out)
    return struct.pack(f"<{len(values)}{_PACK[datatype]}", *values)


def _add(request: Any, shape: ModelShape, name: str, values: Sequence[Any]) -> None:
    spec = shape.inputs[name]
    tensor = request.inputs.add()
    tensor.name = name
    tensor.datatype = spec.datatype
    tensor.shape.extend(shape.shape(name, len(values)))
    request.raw_input_contents.append(_encode(spec.datatype, values))


def generation_request(shape: ModelShape, model: str, request: Generation, request_id: str, stream: bool) -> Any:
    """The ModelInferRequest for `request`, with only the inputs the model declares."""
    out = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    if request.chat and "messages" in shape.inputs:
        _add(out, shape, "messages", [json.dumps(list(request.messages))])
    elif "text_input" in shape.inputs:
        _add(out, shape, "text_input", [request.prompt if not request.chat else plain_prompt(request.messages)])
    else:
        raise UpstreamError(f"model {model!r} declares neither text_input nor messages")
    optional: dict[str, Any] = {
        "stream": stream,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
    }
    for name, value in optional.items():
        if value is not None and name in shape.inputs:
            _add(out, shape, name, [value])
    if request.stop and "stop" in shape.inputs:
        _add(out, shape, "stop", list(request.stop))
    if shape.decoupled:
        out.parameters["triton_enable_empty_final_response"].bool_param = True
    return out


def _first_bytes(raw: bytes) -> str:
    if len(raw) < 4:
        return ""
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length].decode("utf-8", errors="replace")


def _first_int(datatype: str, raw: bytes) -> int:
    code = _PACK.get(datatype)
    if not code or len(raw) < struct.calcsize(code):
        return 0
    return int(struct.unpack_from(f"<{code}", raw)[0])


@dataclass(frozen=True)
class Piece:
    """One response: new text (all of it when not streamed), and on the final one the figures (and
    with finish reason `error`, the engine's message)."""

    text: str
    final: bool
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


def decode(response: Any, decoupled: bool) -> Piece:
    text, finish, prompt_tokens, completion_tokens, error = "", None, None, None, None
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        if tensor.name == "text_output":
            text = _first_bytes(raw)
        elif tensor.name == "error":
            error = _first_bytes(raw) or None
        elif tensor.name == "finish_reason":
            finish = _first_bytes(raw) or None
        elif tensor.name == "prompt_tokens":
            prompt_tokens = _first_int(tensor.datatype, raw)
        elif tensor.name == "completion_tokens":
            completion_tokens = _first_int(tensor.datatype, raw)
    final = response.parameters["triton_final_response"].bool_param if decoupled else True
    return Piece(text, final, finish, prompt_tokens, completion_tokens, error)


class Upstream:
    """One Triton server (a pod's gRPC port): a channel and its models' configs."""

    def __init__(self, address: str, timeout_s: float = 300.0) -> None:
        self.address = address
        self.timeout_s = timeout_s  # longest wait for any one response (or a unary call)
        # No keepalive pings: Triton's gRPC server answers frequent pings on a quiet stream (a long
        # prefill) with GOAWAY. A dead pod shows as a reset connection, a silent one as the timeout.
        self.channel = grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self._shapes: dict[str, ModelShape] = {}

    async def close(self) -> None:
        await self.channel.close()

    async def shape(self, model: str, timeout_s: float = 10.0) -> ModelShape:
        shape = self._shapes.get(model)
        if shape is None:
            try:
                reply = await self.stub.ModelConfig(service_pb2.ModelConfigRequest(name=model), timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise _rpc_error(exc, started=False) from None
            shape = self._shapes[model] = ModelShape.from_config(reply.config)
        return shape

    def generate(self, model: str, request: Generation, request_id: str) -> GenerationCall:
        """The model's responses to `request`, one `next()` at a time; `close()` before the final one
        cancels the request upstream."""
        return GenerationCall(self, model, request, request_id)

    async def embed(self, model: str, texts: Sequence[str]) -> list[np.ndarray]:
        shape = await self.shape(model)
        step = shape.max_batch_size if shape.max_batch_size > 0 else 1
        out: list[np.ndarray] = []
        for start in range(0, len(texts), step):
            batch = texts[start : start + step]
            message = service_pb2.ModelInferRequest(model_name=model)
            tensor = message.inputs.add()
            tensor.name, tensor.datatype = "text_input", "BYTES"
            dims = [1 if dim < 0 else dim for dim in shape.inputs["text_input"].dims]
            tensor.shape.extend(([len(batch)] if shape.max_batch_size > 0 else []) + dims)
            message.raw_input_contents.append(_encode("BYTES", batch))
            try:
                reply = await self.stub.ModelInfer(message, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise _rpc_error(exc, started=False) from None
            index = [o.name for o in reply.outputs].index("embedding")
            rows = np.frombuffer(reply.raw_output_contents[index], dtype="<f4").reshape(len(batch), -1)
            out.extend(rows)
        return out


class GenerationCall:
    """One generation on one upstream: `await next()` gives each response (the last has `final`),
    raising UpstreamError (retryable while nothing was received); `await close()` always."""

    def __init__(self, upstream: Upstream, model: str, request: Generation, request_id: str) -> None:
        self.upstream = upstream
        self.model = model
        self.request = request
        self.request_id = request_id
        self.started = False  # a response arrived
        self.finished = False  # the final response arrived
        self.failed = False  # it raised UpstreamError
        self._call: Any = None
        self._half_close = asyncio.Event()
        self._unary: Piece | None = None

    async def _open(self) -> None:
        shape = await self.upstream.shape(self.model)
        message = generation_request(shape, self.model, self.request, self.request_id, stream=self.request.stream)
        if not shape.decoupled:
            try:
                reply = await self.upstream.stub.ModelInfer(message, timeout=self.upstream.timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise _rpc_error(exc, started=False) from None
            self._unary = decode(reply, decoupled=False)
            return
        half_close = self._half_close

        async def requests() -> AsyncIterator[Any]:
            yield message
            await half_close.wait()  # half-close only once the final response is in

        self._call = self.upstream.stub.ModelStreamInfer(requests())

    async def next(self) -> Piece:
        if self.finished or self.failed:
            raise StopAsyncIteration
        try:
            return await self._next()
        except UpstreamError:
            self.failed = True
            raise

    async def _next(self) -> Piece:
        if self._call is None and self._unary is None:
            await self._open()
        if self._unary is not None:
            self.started = self.finished = True
            return self._unary
        try:
            async with asyncio.timeout(self.upstream.timeout_s):
                reply = await self._call.read()
        except TimeoutError:
            self._call.cancel()
            raise UpstreamError(f"the model sent nothing for {self.upstream.timeout_s:g} s", timeout=True) from None
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error(exc, self.started) from None
        if reply is grpc.aio.EOF:
            raise UpstreamError("the upstream stream ended before the final response", retryable=not self.started)
        if reply.error_message:
            raise in_band_error(reply.error_message, self.started)
        piece = decode(reply.infer_response, decoupled=True)
        self.started = True
        if piece.final:
            self.finished = True
            self._half_close.set()
        return piece

    async def close(self) -> bool:
        """Ends the call; True when that cancelled a generation still running upstream (the client
        went away). A task cancelled while it awaited `next()` has cancelled the RPC already."""
        self._half_close.set()
        if self._call is None or self.finished or self.failed:
            return False
        if not self._call.done():
            self._call.cancel()
        return True


class Upstreams:
    """A channel per address, made on first use and closed once the address leaves the table."""

    def __init__(self, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self._by_address: dict[str, Upstream] = {}

    def get(self, address: str) -> Upstream:
        upstream = self._by_address.get(address)
        if upstream is None:
            upstream = self._by_address[address] = Upstream(address, self.timeout_s)
        return upstream

    async def keep(self, addresses: set[str]) -> None:
        for address in [a for a in self._by_address if a not in addresses]:
            await self._by_address.pop(address).close()

    async def close(self) -> None:
        await self.keep(set())
