"""The gateway's HTTP server (aiohttp): OpenAI's /v1 API over the router and Triton upstreams."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from batchline.gateway import openai_api as oa
from batchline.gateway.auth import ApiKeys
from batchline.gateway.metrics import Metrics, demand_labels
from batchline.gateway.routing import EMBEDDINGS, TEXT_GENERATION, Lease, Model, Rejected, Router, UnknownModel
from batchline.gateway.triton import GenerationCall, Piece, UpstreamError, Upstreams

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's code for a client that went away; only a metric label, never sent


@dataclass(frozen=True)
class Options:
    max_request_bytes: int = 1 << 20
    client_write_timeout_s: float = 30.0
    max_attempts: int = 3  # replicas one request may try while none of its tokens has been sent


class ClientGone(Exception):
    """The client disconnected or stopped reading for longer than the write timeout."""


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(oa.error_body(status, message, param, code), status=status, headers=headers)


class Gateway:
    def __init__(self, router: Router, upstreams: Upstreams, metrics: Metrics, keys: ApiKeys,
                 options: Options = Options()) -> None:
        self.router = router
        self.upstreams = upstreams
        self.metrics = metrics
        self.keys = keys
        self.options = options
        self.draining = False  # shutting down: not ready any more, still serving

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_request_bytes, middlewares=[self._middleware])
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/metrics", self.scrape)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path.startswith("/v1/") and not self.keys.check(request.headers.get("Authorization")):
            return error_response(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                  code="invalid_api_key")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
            if exc.status == 413:
                message = f"the request body is larger than {self.options.max_request_bytes} bytes"
            return error_response(exc.status, message)
        except ConnectionError:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "the gateway failed on this request; see its log")

    # --- models ---------------------------------------------------------------------------------

    def _model_card(self, model: Model) -> dict[str, Any]:
        return {
            "id": model.id,
            "object": "model",
            "created": model.created,
            "owned_by": "batchline",
            **model.info,
            "ready_replicas": len(model.routable()),
        }

    async def list_models(self, request: web.Request) -> web.Response:
        models = sorted(self.router.models.values(), key=lambda m: m.id)
        return web.json_response({"object": "list", "data": [self._model_card(m) for m in models]})

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        try:
            return web.json_response(self._model_card(self.router.model(name)))
        except UnknownModel:
            return error_response(404, f"the model {name!r} does not exist", "model", "model_not_found")

    async def scrape(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="shutting down")
        if not self.router.synced:
            return web.Response(status=503, text="no model table yet")
        return web.Response(text="ok")

    # --- common -------------------------------------------------------------------------------

    async def _json(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise oa.BadRequest(f"the request body is not valid JSON: {exc}") from None

    def _lookup(self, name: str, task: str) -> Model:
        model = self.router.model(name)
        if model.task != task:
            use = "/v1/embeddings" if model.task == EMBEDDINGS else "/v1/chat/completions or /v1/completions"
            raise oa.BadRequest(f"the model {name!r} serves {model.task}; use {use}", "model")
        return model

    def _label(self, body: Any) -> str:
        """The metrics label of a request: its model if the gateway serves it, else ""."""
        name = body.get("model") if isinstance(body, dict) else None
        return name if isinstance(name, str) and name in self.router.models else ""

    def _count(self, model: str, endpoint: str, status: int, started: float) -> None:
        self.metrics.requests.labels(model, endpoint, str(status)).inc()
        self.metrics.latency.labels(model, endpoint).observe(time.monotonic() - started)

    async def _place(self, model: Model, exclude: set[str], deadline: float) -> Lease:
        lease = await self.router.acquire(model.id, exclude, deadline)
        self.metrics.in_flight.labels(*demand_labels(model)).inc()
        return lease

    def _free(self, lease: Lease) -> None:
        self.router.release(lease)
        self.metrics.in_flight.labels(*demand_labels(lease.model)).dec()

    def _retry(self, model: Model, lease: Lease, exc: UpstreamError, exclude: set[str], attempt: int) -> bool:
        if not exc.retryable or attempt + 1 >= self.options.max_attempts:
            return False
        log.warning("model %s: %s unreachable (%s); trying another replica", model.id, lease.endpoint.address,
                    exc.message)
        self.router.eject(lease.endpoint.address)
        exclude.add(lease.endpoint.address)
        self.metrics.retries.labels(model.id).inc()
        return True

    @staticmethod
    def _upstream_failure(exc: UpstreamError) -> web.Response:
        if exc.bad_request:
            return error_response(400, f"the model refused the request: {exc.message}")
        if exc.queue_full:
            return error_response(429, f"the model's replicas are full: {exc.message}", retry_after=1)
        if exc.timeout:
            return error_response(504, f"the model did not answer in time: {exc.message}")
        if exc.retryable:
            return error_response(503, f"no replica could be reached: {exc.message}", retry_after=1)
        return error_response(502, f"the model failed: {exc.message}")

    @staticmethod
    def _failure_status(exc: UpstreamError) -> int:
        if exc.bad_request:
            return 400
        return 429 if exc.queue_full else 504 if exc.timeout else 503 if exc.retryable else 502

    # --- generation -----------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, chat=False)

    async def _generation(self, request: web.Request, chat: bool) -> web.StreamResponse:
        started = time.monotonic()
        endpoint = "chat" if chat else "completions"
        label = ""
        try:
            body = await self._json(request)
            label = self._label(body)
            generation = oa.parse_chat(body) if chat else oa.parse_completion(body)
            model = self._lookup(generation.model, TEXT_GENERATION)
        except oa.BadRequest as exc:
            self._count(label, endpoint, 400, started)
            return error_response(400, exc.message, exc.param, exc.code)
        except UnknownModel as exc:
            self._count(label, endpoint, 404, started)
            return error_response(404, f"the model {exc.args[0]!r} does not exist", "model", "model_not_found")
        label = model.id
        status = 500
        try:
            response, status = await self._generate(request, generation, model, started)
            return response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            self._count(label, endpoint, status, started)

    async def _generate(self, request: web.Request, generation: oa.Generation, model: Model,
                        started: float) -> tuple[web.StreamResponse, int]:
        prefix = "chatcmpl" if generation.chat else "cmpl"
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        deadline = started + self.router.hold_timeout_s
        exclude: set[str] = set()
        for attempt in range(self.options.max_attempts):
            try:
                lease = await self._place(model, exclude, deadline)
            except Rejected as exc:
                return error_response(exc.status, exc.message, retry_after=exc.retry_after), exc.status
            upstream = self.upstreams.get(lease.endpoint.address)
            pieces = upstream.generate(model.triton_model, generation, request_id)
            try:
                try:
                    first = await pieces.next()
                except UpstreamError as exc:
                    if self._retry(model, lease, exc, exclude, attempt):
                        continue
                    return self._upstream_failure(exc), self._failure_status(exc)
                if generation.stream:
                    return await self._stream(request, generation, model, request_id, first, pieces, started)
                return await self._collect(generation, model, request_id, first, pieces)
            finally:
                await self._close(pieces, model)
                self._free(lease)
        raise AssertionError("unreachable")  # the last attempt never retries

    async def _close(self, pieces: GenerationCall, model: Model) -> None:
        if await pieces.close():
            self.metrics.cancelled.labels(model.id).inc()

    def _tokens(self, model: Model, prompt: int, completion: int) -> None:
        self.metrics.prompt_tokens.labels(model.id).inc(prompt)
        self.metrics.completion_tokens.labels(model.id).inc(completion)

    async def _collect(self, generation: oa.Generation, model: Model, request_id: str, first: Piece,
                       pieces: GenerationCall) -> tuple[web.StreamResponse, int]:
        parts, piece = [first.text], first
        try:
            while not piece.final:
                piece = await pieces.next()
                parts.append(piece.text)
        except UpstreamError as exc:
            return self._upstream_failure(exc), self._failure_status(exc)
        except StopAsyncIteration:
            pass
        if piece.finish_reason == "error":
            return error_response(502, f"the model failed while generating: {piece.error or 'no reason given'}"), 502
        # A model that does not count tokens (the static engine) reports none rather than a guess.
        prompt_tokens = piece.prompt_tokens or 0
        completion_tokens = piece.completion_tokens or 0
        self._tokens(model, prompt_tokens, completion_tokens)
        body = oa.completion_body(generation, request_id, int(time.time()), "".join(parts),
                                  piece.finish_reason or "stop", prompt_tokens, completion_tokens)
        return web.json_response(body), 200

    async def _write(self, request: web.Request, response: web.StreamResponse, data: bytes) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ClientGone("the client disconnected")
        try:
            if transport.get_write_buffer_size() > 0:  # the client is behind: do not wait on it forever
                async with asyncio.timeout(self.options.client_write_timeout_s):
                    await response.write(data)
            else:
                await response.write(data)
        except TimeoutError:
            transport.close()
            raise ClientGone(f"the client read nothing for {self.options.client_write_timeout_s:g} s") from None
        except ConnectionError as exc:
            raise ClientGone(str(exc)) from None

    async def _stream(self, request: web.Request, generation: oa.Generation, model: Model, request_id: str,
                      first: Piece, pieces: GenerationCall, started: float) -> tuple[web.StreamResponse, int]:
        response = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        })
        writer = oa.ChunkWriter(generation, request_id, int(time.time()))
        first_at = time.monotonic()
        self.metrics.ttft.labels(model.id).observe(first_at - started)
        piece, count, last_at = first, 0, first_at
        try:
            await response.prepare(request)
            opening = writer.first()
            head = opening or b""
            while True:
                count += bool(piece.text)
                if piece.final:
                    if piece.finish_reason == "error":
                        message = f"the model failed while generating: {piece.error or 'no reason given'}"
                        await self._write(request, response, head + oa.error_event(message))
                        return response, 502
                    data = head + writer.text(piece.text, piece.finish_reason or "stop")
                    # As in whole answers, no guess where the model counts no tokens; the time per
                    # token then spreads over the chunks.
                    completion = piece.completion_tokens or 0
                    prompt = piece.prompt_tokens or 0
                    if generation.include_usage:
                        data += writer.usage(prompt, completion)
                    await self._write(request, response, data + oa.DONE)
                    break
                if piece.text or head:
                    await self._write(request, response, head + writer.text(piece.text))
                    head = b""
                try:
                    piece = await pieces.next()
                except StopAsyncIteration:
                    piece = Piece("", True, "stop")
                last_at = time.monotonic()
        except UpstreamError as exc:
            log.warning("model %s: stream %s failed after it started: %s", model.id, request_id, exc.message)
            with contextlib.suppress(ClientGone):
                await self._write(request, response, oa.error_event(f"the model failed: {exc.message}"))
            return response, 502
        except ClientGone as exc:
            log.info("model %s: stream %s: %s; cancelling it upstream", model.id, request_id, exc)
            return response, CLIENT_CLOSED
        self._tokens(model, prompt, completion)
        tokens = completion or count
        if tokens > 1:
            self.metrics.tpot.labels(model.id).observe((last_at - first_at) / (tokens - 1))
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response, 200

    # --- embeddings -----------------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        label, status = "", 500
        try:
            try:
                body = await self._json(request)
                label = self._label(body)
                parsed = oa.parse_embeddings(body)
                model = self._lookup(parsed.model, EMBEDDINGS)
            except oa.BadRequest as exc:
                status = 400
                return error_response(400, exc.message, exc.param, exc.code)
            except UnknownModel as exc:
                status = 404
                return error_response(404, f"the model {exc.args[0]!r} does not exist", "model", "model_not_found")
            label = model.id
            response, status = await self._embed(parsed, model, started)
            return response
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            self._count(label, "embeddings", status, started)

    async def _embed(self, parsed: oa.EmbeddingRequest, model: Model, started: float) -> tuple[web.Response, int]:
        deadline = started + self.router.hold_timeout_s
        exclude: set[str] = set()
        for attempt in range(self.options.max_attempts):
            try:
                lease = await self._place(model, exclude, deadline)
            except Rejected as exc:
                return error_response(exc.status, exc.message, retry_after=exc.retry_after), exc.status
            try:
                vectors = await self.upstreams.get(lease.endpoint.address).embed(model.triton_model, parsed.texts)
            except UpstreamError as exc:
                if self._retry(model, lease, exc, exclude, attempt):
                    continue
                return self._upstream_failure(exc), self._failure_status(exc)
            finally:
                self._free(lease)
            data = []
            for index, vector in enumerate(vectors):
                value: Any = (base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
                              if parsed.base64 else [float(x) for x in vector])
                data.append({"object": "embedding", "index": index, "embedding": value})
            body = {"object": "list", "data": data, "model": model.id, "usage": {"prompt_tokens": 0, "total_tokens": 0}}
            return web.json_response(body), 200
        raise AssertionError("unreachable")
