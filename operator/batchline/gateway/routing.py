"""Which endpoint serves a request: a pure choice, and the table of models that holds requests.

`pick()` is the policy: among an endpoint list, the ready, non-terminating one with the fewest
requests in flight (ties rotate), never one that is excluded (failed for this request, or ejected
for a while after a connection failure) or full. `Router` keeps the current models, counts requests
in flight per endpoint and holds the requests that find no endpoint, up to a queue size per model
and a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TEXT_GENERATION = "text-generation"
EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class Endpoint:
    address: str  # host:port of Triton's gRPC port
    ready: bool = True
    terminating: bool = False
    pod: str = ""


@dataclass(frozen=True)
class Model:
    id: str  # what clients send as `model`
    triton_model: str  # the name Triton serves it under
    task: str = TEXT_GENERATION
    endpoints: tuple[Endpoint, ...] = ()
    created: int = 0
    info: Mapping[str, Any] = field(default_factory=dict)  # extra fields for GET /v1/models
    namespace: str = ""  # the LLMDeployment's ("" for a static upstream)
    name: str = ""  # the LLMDeployment's name ("" means the id)

    def routable(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.ready and not e.terminating]


def pick(
    endpoints: Sequence[Endpoint],
    in_flight: Mapping[str, int],
    *,
    exclude: Collection[str] = (),
    limit: int = 0,
    turn: int = 0,
) -> Endpoint | None:
    """The ready, non-terminating endpoint with the fewest requests in flight, or None.

    `exclude`: addresses not to use; `limit`: requests in flight an endpoint may hold (0: no limit);
    `turn`: rotates the choice among equally loaded endpoints, so idle ones share the work.
    """
    candidates = [
        e
        for e in endpoints
        if e.ready and not e.terminating and e.address not in exclude
        and (limit <= 0 or in_flight.get(e.address, 0) < limit)
    ]
    if not candidates:
        return None
    least = min(in_flight.get(e.address, 0) for e in candidates)
    tied = sorted((e for e in candidates if in_flight.get(e.address, 0) == least), key=lambda e: e.address)
    return tied[turn % len(tied)]


class Rejected(Exception):
    """A request the router will not place: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class UnknownModel(LookupError):
    pass


@dataclass
class Lease:
    model: Model
    endpoint: Endpoint
    _released: bool = False


class Router:
    """The models the gateway serves, their endpoints' load, and the requests waiting for one.

    Runs on one event loop; `update()` may come from another thread through `call_soon_threadsafe`.
    """

    def __init__(
        self,
        *,
        max_waiting: int = 100,
        hold_timeout_s: float = 60.0,
        max_in_flight_per_endpoint: int = 0,
        eject_s: float = 5.0,
        on_waiting: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_waiting = max_waiting
        self.hold_timeout_s = hold_timeout_s
        self.limit = max_in_flight_per_endpoint
        self.eject_s = eject_s
        self.models: dict[str, Model] = {}
        self.in_flight: dict[str, int] = {}
        self.waiting: dict[str, int] = {}
        self._ejected: dict[str, float] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._turn = 0
        self.on_waiting = on_waiting
        self._clock = clock
        self.synced = False  # whether discovery has delivered a first table

    def update(self, models: Mapping[str, Model]) -> None:
        """Replaces the table (a discovery event); wakes every held request to look again."""
        self.models = dict(models)
        self.synced = True
        for event in list(self._changed.values()):
            event.set()

    def model(self, model_id: str) -> Model:
        model = self.models.get(model_id)
        if model is None:
            raise UnknownModel(model_id)
        return model

    def eject(self, address: str) -> None:
        """After a connection failure: no new requests to `address` for a while."""
        self._ejected[address] = self._clock() + self.eject_s

    def _excluded(self, exclude: Collection[str]) -> set[str]:
        now = self._clock()
        for address, until in list(self._ejected.items()):
            if until <= now:
                del self._ejected[address]
        return {*exclude, *self._ejected}

    def _try(self, model_id: str, exclude: Collection[str]) -> Lease | None:
        model = self.models.get(model_id)
        if model is None:
            raise UnknownModel(model_id)
        self._turn += 1
        endpoint = pick(model.endpoints, self.in_flight, exclude=self._excluded(exclude), limit=self.limit,
                        turn=self._turn)
        if endpoint is None:
            return None
        self.in_flight[endpoint.address] = self.in_flight.get(endpoint.address, 0) + 1
        return Lease(model, endpoint)

    def _wake(self, model_id: str) -> None:
        event = self._changed.get(model_id)
        if event is not None:
            event.set()

    def _set_waiting(self, model_id: str, count: int) -> None:
        self.waiting[model_id] = count
        if self.on_waiting is not None:
            self.on_waiting(model_id, count)

    async def acquire(self, model_id: str, exclude: Collection[str] = (), deadline: float | None = None) -> Lease:
        """A lease on an endpoint of `model_id`, waiting for one up to the hold timeout.

        Raises UnknownModel, or Rejected: 429 when the model's wait queue is full, 503 when no
        endpoint of the model became ready in time, 504 when ready endpoints stayed full.
        """
        lease = self._try(model_id, exclude)
        if lease is not None:
            return lease
        waiting = self.waiting.get(model_id, 0)
        if waiting >= self.max_waiting:
            raise Rejected(429, f"too many requests are waiting for model {model_id!r}", retry_after=1)
        if deadline is None:
            deadline = self._clock() + self.hold_timeout_s
        self._set_waiting(model_id, waiting + 1)
        try:
            while True:
                event = self._changed.setdefault(model_id, asyncio.Event())
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(min(remaining, self.eject_s)):
                        await event.wait()
                except TimeoutError:
                    pass
                if event.is_set():
                    self._changed.pop(model_id, None)
                lease = self._try(model_id, exclude)
                if lease is not None:
                    return lease
        finally:
            self._set_waiting(model_id, self.waiting.get(model_id, 1) - 1)
        model = self.models.get(model_id)
        excluded = self._excluded(exclude)
        if model is not None and any(e.address not in excluded for e in model.routable()):
            raise Rejected(504, f"no replica of model {model_id!r} had room within {self.hold_timeout_s:g} s")
        raise Rejected(503, f"no replica of model {model_id!r} became ready within {self.hold_timeout_s:g} s",
                       retry_after=max(1, int(self.hold_timeout_s)))

    def release(self, lease: Lease) -> None:
        if lease._released:
            return
        lease._released = True
        address = lease.endpoint.address
        count = self.in_flight.get(address, 1) - 1
        if count > 0:
            self.in_flight[address] = count
        else:
            self.in_flight.pop(address, None)
        self._wake(lease.model.id)

    def in_flight_for(self, model: Model) -> int:
        return sum(self.in_flight.get(e.address, 0) for e in model.endpoints)
