"""In-flight batching for a loaded causal LM: transformers' continuous batching, driven request by request.

The builder copies this file into every text-generation repository as `batchline_engine.py`, next to
`batchline_runtime.py`; like that file it imports nothing from this package.

`Engine` wraps one `ContinuousBatchingManager` (`model.init_continuous_batching`): a paged KV cache
of an explicit size (never sized from the host's memory), prefix caching, a background thread that
runs one forward pass per step over every running request. A request added between two steps joins
the next one; a finished or cancelled request leaves the batch at once and frees its cache blocks.

On top of it, one pump thread per engine turns the manager's outputs (each carries all tokens so far)
into text deltas per request: it decodes incrementally, holds back half a multi-byte character and
any text that may still become a stop string, cuts stop strings, and checks each request's
`is_cancelled` between steps. Sampling (temperature, top-p, per-request seed) runs in a per-request
logits processor; temperature 0 is greedy, token for token the same as `generate()`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

# What the manager's outputs carry in `status` (transformers' RequestStatus) once a request is done.
_FAILED_STATUS = 4
POLL_S = 0.02
START_TIMEOUT_S = 120.0
DEFAULT_PAGE_SIZE = 64

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"


class RequestError(ValueError):
    """A request the engine refuses (prompt too long for the context or the cache, bad settings)."""


class EngineUnavailableError(RuntimeError):
    """This transformers has no continuous batching, or the engine is stopped."""


@dataclass(frozen=True)
class Sampling:
    """Per-request generation settings. temperature 0 is greedy decoding."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not self.temperature >= 0 or math.isinf(self.temperature):
            raise RequestError(f"temperature must not be negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must lie in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Update:
    """What a request's sink receives: the text new since the previous update, and on the last one
    (`finished`) why it ended and the token counts."""

    text: str
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int


class Observer(Protocol):
    """Receives per-request timings and counts (for metrics); called from the pump thread."""

    def first_token(self, seconds: float) -> None: ...
    def output_token(self, seconds: float) -> None: ...
    def finished(self, prompt_tokens: int, completion_tokens: int, seconds: float) -> None: ...
    def stats(self, stats: EngineStats) -> None: ...


class _NoObserver:
    def first_token(self, seconds: float) -> None:
        pass

    def output_token(self, seconds: float) -> None:
        pass

    def finished(self, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        pass

    def stats(self, stats: EngineStats) -> None:
        pass


@dataclass
class _Request:
    id: str
    prompt_tokens: int
    sampling: Sampling
    max_tokens: int
    sink: Callable[[Update], None]
    is_cancelled: Callable[[], bool] | None
    started: float = field(default_factory=time.perf_counter)
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded completion already sent
    last_token_time: float | None = None
    slot: int | None = None


class _Sampler:
    """A continuous-batching logits processor: per-request temperature, top-p and seeded sampling.

    The manager runs greedy (arg-max) decoding; for a sampling request this processor draws the token
    itself (from that request's own torch.Generator, so a seed gives the same text whatever else is
    in the batch) and leaves only that token possible. Greedy requests' rows pass unchanged.
    Each row's tensor argument is a slot number that names its request's settings.
    """

    supported_kwargs: dict[str, type] = {"batchline_slot": int}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.slots: dict[int, tuple[float, float, torch.Generator]] = {}

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(-1)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        slots = [
            int(request.state.logit_processor_kwargs.get("batchline_slot", -1)) for request in requests_with_new_token
        ]
        return torch.tensor(slots, dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        slots = tensor_arg[: scores.size(0)].tolist()
        if all(slot < 0 for slot in slots):
            return scores
        scores = scores.clone()
        for row, slot in enumerate(slots):
            settings = self.slots.get(slot)
            if settings is None:
                continue
            temperature, top_p, generator = settings
            logits = scores[row].float() / temperature
            probs = logits.softmax(dim=-1)
            if top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = (sorted_probs.cumsum(dim=-1) - sorted_probs) > top_p
                sorted_probs = sorted_probs.masked_fill(outside, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
            token = torch.multinomial(probs, 1, generator=generator)
            scores[row] = torch.full_like(scores[row], float("-inf")).scatter(-1, token, 0.0)
        return scores


def _make_processor_list(sampler: _Sampler) -> Any:
    from transformers import LogitsProcessorList
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
        ContinuousBatchingLogitsProcessorList,
    )

    # Registered as a virtual subclass: the list hands it one int32 argument per row.
    ContinuousBatchingLogitsProcessor.register(_Sampler)
    processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList([sampler]), per_request_processors=False)
    processors.tensors_required = 1
    return processors


def continuous_batching_available(model: Any) -> bool:
    return callable(getattr(model, "init_continuous_batching", None))


PER_SEQUENCE_ATTENTION = "batchline_per_sequence_sdpa"


def per_sequence_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for a continuous batch without flash attention (the CPU): each sequence's queries
    against its own keys only, one SDPA call per sequence with grouped-query heads as they are.

    transformers' `sdpa` path runs every query of the step against every key of the step under a
    block-diagonal mask, after copying the key/value heads out to the query heads (`repeat_kv`): at
    16 sequences of a few hundred tokens that is most of a decode step's time on a CPU. Within a
    sequence, keys are its cached tokens and then the step's new ones (`cu_seq_lens_k`), so the mask
    is causal aligned to the last key. Anything else (no per-sequence lengths: a plain forward pass,
    e.g. `generate()` on the same model) goes to transformers' own SDPA attention."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    starts_q, starts_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if not isinstance(starts_q, torch.Tensor) or not isinstance(starts_k, torch.Tensor):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    bounds_q, bounds_k = starts_q.tolist(), starts_k.tolist()
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    outputs = []
    for index in range(len(bounds_q) - 1):
        q = query[:, :, bounds_q[index] : bounds_q[index + 1]]
        k = key[:, :, bounds_k[index] : bounds_k[index + 1]]
        v = value[:, :, bounds_k[index] : bounds_k[index + 1]]
        new, seen = q.shape[2], k.shape[2]
        mask = None if new == 1 else torch.ones(new, seen, dtype=torch.bool, device=q.device).tril(seen - new)
        outputs.append(
            torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=grouped)
        )
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def _use_per_sequence_attention(model: Any) -> bool:
    """Switches a model on the CPU that attends with SDPA over full causal layers to `per_sequence_sdpa`.
    Sliding-window layers and soft-capped logits need transformers' masks, so those models keep them;
    on a GPU (measured only on the CPU) the one batched SDPA call stays, one call per sequence and
    layer would cost a kernel launch and a host sync each."""
    from transformers import AttentionInterface

    if next(model.parameters()).device.type != "cpu":
        return False
    config = model.config.get_text_config()
    full_layers = all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or ())
    plain = not getattr(config, "sliding_window", None) and not getattr(config, "attn_logit_softcapping", None)
    if model.config._attn_implementation != "sdpa" or not (full_layers and plain):
        return False
    AttentionInterface.register(PER_SEQUENCE_ATTENTION, per_sequence_sdpa)
    model.set_attn_implementation(PER_SEQUENCE_ATTENTION)
    return True


class Engine:
    """One continuous-batching engine over `model` (which nothing else may run while it lives)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        kv_cache_tokens: int,
        max_batch_tokens: int,
        max_requests: int,
        page_size: int = DEFAULT_PAGE_SIZE,
        observer: Observer | None = None,
    ) -> None:
        if not continuous_batching_available(model):
            import transformers

            raise EngineUnavailableError(
                f"transformers {transformers.__version__} has no continuous batching (model.init_continuous_batching); "
                "the in-flight engine needs transformers>=5.17,<6 (pip install 'batchline[builder]'), or build "
                "the model with --engine static"
            )
        from transformers import ContinuousBatchingConfig, GenerationConfig

        if kv_cache_tokens < page_size:
            raise ValueError(f"kv_cache_tokens must be at least the page size ({page_size}), got {kv_cache_tokens}")
        self.tokenizer = tokenizer
        self.observer: Observer = observer or _NoObserver()
        self.eos_ids = _eos_ids(model, tokenizer)
        self.context_length = int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 0)
        self._sampler = _Sampler()
        generation = GenerationConfig(
            do_sample=False, max_new_tokens=16, eos_token_id=self.eos_ids or -1, pad_token_id=tokenizer.pad_token_id
        )
        config = ContinuousBatchingConfig(
            page_size=page_size,
            num_blocks=-(-kv_cache_tokens // page_size),
            max_batch_tokens=max_batch_tokens,
            max_requests_per_batch=max_requests,
            use_cuda_graph=False,
            use_async_batching=False,
            auto_switch_to_flash=False,
        )
        self._manager = model.init_continuous_batching(generation_config=generation, continuous_batching_config=config)
        self._manager.logit_processor = _make_processor_list(self._sampler)
        # After the manager checked the attention (it takes sdpa, eager or flash only) and before its
        # thread sets up the batch inputs, which then build no masks for the per-sequence attention.
        self.attention = (
            PER_SEQUENCE_ATTENTION if _use_per_sequence_attention(model) else model.config._attn_implementation
        )
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._slots = itertools.count()
        self._prefix = f"{os.getpid()}-{id(self):x}-"
        self._closing = threading.Event()
        self._manager.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._manager.batch_processor is None:
            if not self._manager.is_running() or time.monotonic() > deadline:
                error = self._manager.background_thread_status.fatal_error
                self._manager.stop(block=True, timeout=10)
                raise EngineUnavailableError(f"the continuous-batching engine did not start: {error}")
            time.sleep(0.01)
        cache = self._manager.batch_processor.cache
        self.kv_blocks_total = int(cache.num_blocks)
        self.kv_cache_tokens = int(cache.max_tokens_read)
        self._pump = threading.Thread(target=self._run_pump, name="batchline-engine-pump", daemon=True)
        self._pump.start()

    # ------------------------------------------------------------------ requests

    def encode(self, prompt: str | None = None, messages: Sequence[dict[str, Any]] | None = None) -> list[int]:
        """Token ids of a plain prompt, or of chat `messages` through the tokenizer's chat template."""
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise RequestError("this model's tokenizer has no chat template; send text_input instead of messages")
            try:
                ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
            except Exception as exc:
                raise RequestError(f"messages do not fit the model's chat template: {exc}") from exc
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(token) for token in ids]
        return [int(token) for token in self.tokenizer(prompt or "")["input_ids"]]

    def submit(
        self,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        sink: Callable[[Update], None],
        is_cancelled: Callable[[], bool] | None = None,
    ) -> str:
        """Queues a request; its updates go to `sink` from the pump thread. Raises RequestError for a
        prompt that cannot run (empty, longer than the context or the whole KV cache)."""
        if self._closing.is_set():
            raise EngineUnavailableError("the engine is stopped")
        prompt = [int(token) for token in prompt_ids]
        if not prompt:
            raise RequestError("the prompt is empty")
        limit = self.kv_cache_tokens
        what = f"the KV cache ({self.kv_cache_tokens} tokens)"
        if self.context_length and self.context_length < limit:
            limit, what = self.context_length, f"the model's context ({self.context_length} tokens)"
        if len(prompt) >= limit:
            raise RequestError(f"the prompt has {len(prompt)} tokens; {what} leaves no room to generate")
        max_tokens = min(sampling.max_tokens, limit - len(prompt))
        request_id = f"{self._prefix}{next(self._ids)}"
        kwargs: dict[str, Any] = {}
        if sampling.temperature > 0:
            slot = next(self._slots)
            generator = torch.Generator(device=self._manager.model.device)
            generator.manual_seed(sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(7), "big"))
            self._sampler.slots[slot] = (sampling.temperature, sampling.top_p, generator)
            kwargs["batchline_slot"] = slot
        request = _Request(request_id, len(prompt), sampling, max_tokens, sink, is_cancelled)
        request.slot = kwargs.get("batchline_slot")
        with self._lock:
            self._requests[request_id] = request
        added = self._manager.add_request(
            prompt,
            request_id=request_id,
            max_new_tokens=max_tokens,
            streaming=True,
            eos_token_id=self.eos_ids or -1,
            **kwargs,
        )
        if added is None:
            self._forget(request_id)
            raise EngineUnavailableError("the engine is not accepting requests")
        return request_id

    def cancel(self, request_id: str) -> None:
        """Ends a request now (finish reason `cancelled`) and frees its cache blocks at the next step."""
        request = self._forget(request_id)
        if request is not None:
            self._manager.cancel_request(request_id)
            self._finish(request, FINISH_CANCELLED)

    def stats(self) -> EngineStats:
        processor = self._manager.batch_processor
        running = waiting = used = 0
        if processor is not None:
            scheduler = processor.scheduler
            running = len(scheduler.active_requests)
            waiting = len(scheduler.waiting_requests) + self._manager.input_queue.qsize()
            used = _blocks_in_use(processor.cache)
        return EngineStats(running, waiting, min(used, self.kv_blocks_total), self.kv_blocks_total)

    @property
    def active_requests(self) -> int:
        with self._lock:
            return len(self._requests)

    def close(self, timeout: float = 30.0) -> None:
        """Stops the engine thread and the pump; requests still running end with an error update."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._manager.stop(block=True, timeout=timeout, hard_stop=True)
        self._pump.join(timeout)
        with self._lock:
            left = list(self._requests.values())
            self._requests.clear()
        for request in left:
            self._finish(request, FINISH_ERROR, error="the model is being unloaded")

    @property
    def running(self) -> bool:
        return self._manager.is_running() and self._pump.is_alive()

    # ------------------------------------------------------------------ pump thread

    def _forget(self, request_id: str) -> _Request | None:
        with self._lock:
            request = self._requests.pop(request_id, None)
        if request is not None and request.slot is not None:
            self._sampler.slots.pop(request.slot, None)
        return request

    def _run_pump(self) -> None:
        output_queue: queue.Queue[Any] = self._manager.output_router.output_queue
        last_poll = 0.0
        while not (self._closing.is_set() and output_queue.empty()):
            try:
                output = output_queue.get(timeout=POLL_S)
            except queue.Empty:
                output = None
            if output is not None:
                self._handle(output)
            now = time.monotonic()
            if now - last_poll >= POLL_S:
                last_poll = now
                self._poll_cancelled()
                self._check_engine()
                with contextlib.suppress(Exception):  # metrics must never stop the pump
                    self.observer.stats(self.stats())

    def _poll_cancelled(self) -> None:
        with self._lock:
            polled = [request for request in self._requests.values() if request.is_cancelled is not None]
        for request in polled:
            try:
                gone = request.is_cancelled() if request.is_cancelled else False
            except Exception:
                gone = True
            if gone:
                self.cancel(request.id)

    def _check_engine(self) -> None:
        if self._closing.is_set() or self._manager.is_running():
            return
        error = self._manager.background_thread_status.fatal_error or "the engine thread stopped"
        with self._lock:
            left = list(self._requests.values())
            self._requests.clear()
        for request in left:
            self._finish(request, FINISH_ERROR, error=f"engine failure: {error}")

    def _handle(self, output: Any) -> None:
        with self._lock:
            request = self._requests.get(output.request_id)
        if request is None:
            return  # finished here already (stop string, cancellation)
        if int(output.status) == _FAILED_STATUS:
            self._forget(request.id)
            self._finish(request, FINISH_ERROR, error=str(output.error or "generation failed"))
            return
        tokens = list(output.generated_tokens)
        now = time.perf_counter()
        new = len(tokens) - len(request.tokens)
        if new > 0:
            if not request.tokens:
                self.observer.first_token(now - request.started)
            elif request.last_token_time is not None:
                for _ in range(new):
                    self.observer.output_token((now - request.last_token_time) / new)
            request.last_token_time = now
        request.tokens = tokens
        done = output.is_finished()
        text = self._decode(tokens)
        stop_at = _find_stop(text, request.sampling.stop, request.sent)
        if stop_at is not None:
            self._forget(request.id)
            if not done:
                self._manager.cancel_request(request.id)
            self._emit(request, text[:stop_at], final=True)
            self._finish(request, FINISH_STOP)
            return
        if done or len(tokens) >= request.max_tokens:
            self._forget(request.id)
            if not done:
                self._manager.cancel_request(request.id)
            self._emit(request, text, final=True)
            eos = bool(tokens) and tokens[-1] in self.eos_ids
            self._finish(request, FINISH_STOP if eos else FINISH_LENGTH)
            return
        self._emit(request, text, final=False)

    def _decode(self, tokens: list[int]) -> str:
        while tokens and tokens[-1] in self.eos_ids:
            tokens = tokens[:-1]
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _emit(self, request: _Request, text: str, final: bool) -> None:
        end = len(text)
        if not final:
            # Hold back half a multi-byte character and any tail that may still grow into a stop string.
            end = len(text.rstrip("\ufffd"))
            end -= _stop_prefix_length(text[:end], request.sampling.stop)
        if end > request.sent:
            delta = text[request.sent : end]
            request.sent = end
            self._deliver(request, Update(delta))

    def _finish(self, request: _Request, reason: str, error: str | None = None) -> None:
        completion = len([token for token in request.tokens if token not in self.eos_ids])
        self.observer.finished(request.prompt_tokens, completion, time.perf_counter() - request.started)
        self._deliver(
            request,
            Update("", finished=True, finish_reason=reason, prompt_tokens=request.prompt_tokens,
                   completion_tokens=completion, error=error),
        )  # fmt: skip

    @staticmethod
    def _deliver(request: _Request, update: Update) -> None:
        with contextlib.suppress(Exception):  # a sink that fails (client gone) must not stop the pump
            request.sink(update)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        for token in value if isinstance(value, list | tuple) else [value]:
            if token is not None and int(token) >= 0 and int(token) not in ids:
                ids.append(int(token))
    return ids


def _blocks_in_use(cache: Any) -> int:
    """Cache blocks that running requests hold (prefix-cached blocks no request holds count as free:
    they are evicted as soon as a request needs the room)."""
    used = 0
    for allocator in cache.cache_allocators.values():
        for _ in range(3):  # the engine thread may change the tables while this reads them
            try:
                tables = list(allocator.block_table.values())
                used = max(used, len({block for table in tables for block in table}))
                break
            except RuntimeError:
                continue
    return used


def _find_stop(text: str, stops: Sequence[str], sent: int) -> int | None:
    """Where the first stop string starts in `text` (searching only where a new one can be), or None."""
    found = None
    for stop in stops:
        if not stop:
            continue
        index = text.find(stop, max(0, sent - len(stop) + 1))
        if index >= 0 and (found is None or index < found):
            found = index
    return found


def _stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-size:]):
                best = size
                break
    return best
