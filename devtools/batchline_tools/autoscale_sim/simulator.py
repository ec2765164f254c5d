"""Discrete-event simulation of a pool of Triton replicas serving a request trace.

Each replica is one model instance behind Triton's dynamic batcher: when the instance is free it
takes up to `max_batch_size` queued requests and runs them as one `generate()` call, so every
request of a batch completes when the batch does (the static python-backend engine, one batch per
`execute`). Requests are routed round-robin (kube-proxy IPVS default)
to ready replicas when they arrive and queue inside that replica; a replica being removed takes
no new requests and finishes its queue first. New replicas become ready after a cold start.

Every `scrape_interval_s` the pool is "scraped" the way Prometheus would see Triton's metrics
(counters, the pending gauge, per-pod sliding-window summaries) and the controller under test
picks a replica count.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from batchline.autoscaler.policy import MetricSample
from batchline_tools.autoscale_sim.trace import Trace


@dataclass(frozen=True)
class ReplicaProfile:
    """Service time of one batch: overhead + prefill of all prompts + decode of the longest output.

    The decode step grows as batch_size ** batch_exponent. The exponent comes from the CPU
    measurement (4.8x throughput at batch 16 and 2.7x at batch 8 give 0.43 and 0.52); the
    absolute times are a GPU-ish 7-8B model under the same naive python backend: 6 ms per
    decode step at batch 1 (~170 tokens/s) and 0.25 ms per prompt token (~4k tokens/s prefill).
    """

    max_batch_size: int = 8
    prefill_ms_per_token: float = 0.25
    decode_step_ms: float = 6.0
    batch_exponent: float = 0.5
    batch_overhead_ms: float = 20.0

    def batch_seconds(self, context_tokens: int, max_generated: int, size: int) -> float:
        step_ms = self.decode_step_ms * size**self.batch_exponent
        return (self.batch_overhead_ms + self.prefill_ms_per_token * context_tokens + step_ms * max_generated) / 1e3


@dataclass(frozen=True)
class SimConfig:
    profile: ReplicaProfile = field(default_factory=ReplicaProfile)
    cold_start_s: float = 60.0
    scrape_interval_s: float = 15.0  # Prometheus scrape, and the controllers' tick
    rate_window_s: float = 60.0  # rate(...[1m])
    summary_window_s: float = 60.0  # Triton summaries' sliding window
    latency_quantile: float = 0.95
    initial_replicas: int = 1


@dataclass(frozen=True)
class PoolView:
    """What a controller sees at a tick."""

    now: float
    replicas: int  # the Deployment's spec.replicas
    ready: int
    sample: MetricSample  # aggregated over pods, as the Prometheus queries return it
    pod_latency_ms: tuple[float, ...]  # per non-terminating pod summary quantile; NaN: no value


class Controller(Protocol):
    name: str

    def desired(self, view: PoolView) -> int: ...


@dataclass(frozen=True)
class Timeline:
    """One row per tick."""

    t: np.ndarray
    arrivals_per_s: np.ndarray
    replicas: np.ndarray
    ready: np.ndarray
    latency_ms: np.ndarray  # p95 of the requests completed since the previous tick


@dataclass(frozen=True)
class SimResult:
    policy: str
    trace: str
    target_latency_ms: float
    requests: int
    slo_attainment: float
    minutes_within_slo: float
    replica_hours: float
    scale_events: int
    p95_latency_ms: float
    timeline: Timeline

    def metrics(self) -> dict[str, float | int | str]:
        return {
            "policy": self.policy,
            "trace": self.trace,
            "target_latency_ms": self.target_latency_ms,
            "requests": self.requests,
            "slo_attainment": round(self.slo_attainment, 4),
            "minutes_within_slo": round(self.minutes_within_slo, 4),
            "replica_hours": round(self.replica_hours, 3),
            "scale_events": self.scale_events,
            "p95_latency_ms": round(self.p95_latency_ms, 1),
        }


class _Replica:
    __slots__ = ("batch", "created", "deleted", "draining", "index", "queue", "ready_at", "recent")

    def __init__(self, index: int, created: float, ready_at: float) -> None:
        self.index = index
        self.created = created
        self.ready_at = ready_at
        self.deleted: float | None = None
        self.draining = False
        self.queue: deque[int] = deque()
        self.batch: list[int] = []
        self.recent: deque[tuple[float, float]] = deque()  # (completion time, latency ms)

    def ready(self, now: float) -> bool:
        return self.ready_at <= now


MAX_DRAIN_S = 6 * 3600.0
# Event kinds, in the order they are handled at equal times.
_DONE, _READY, _TICK = 0, 1, 2


class _Pool:
    def __init__(self, trace: Trace, config: SimConfig) -> None:
        self.trace = trace
        self.config = config
        n = len(trace.arrival_s)
        self.started = np.full(n, np.nan)
        self.finished = np.full(n, np.nan)
        self.replicas: list[_Replica] = []
        self.events: list[tuple[float, int, int, int]] = []
        self.seq = itertools.count()
        self.unrouted: deque[int] = deque()  # arrived while no replica was ready
        self.rr = 0
        self.completed = 0
        self.queue_sum_ms = 0.0
        for _ in range(config.initial_replicas):
            self.add_replica(0.0, 0.0)

    def add_replica(self, now: float, ready_at: float) -> _Replica:
        replica = _Replica(len(self.replicas), now, ready_at)
        self.replicas.append(replica)
        return replica

    def push(self, when: float, kind: int, payload: int) -> None:
        heapq.heappush(self.events, (when, kind, next(self.seq), payload))

    def alive(self) -> list[_Replica]:
        return [r for r in self.replicas if r.deleted is None]

    def serving(self, now: float) -> list[_Replica]:
        return [r for r in self.replicas if r.deleted is None and not r.draining and r.ready(now)]

    def arrive(self, i: int, now: float) -> None:
        targets = self.serving(now)
        if not targets:
            self.unrouted.append(i)
            return
        replica = targets[self.rr % len(targets)]
        self.rr += 1
        replica.queue.append(i)
        if not replica.batch:
            self.start_batch(replica, now)

    def start_batch(self, replica: _Replica, now: float) -> None:
        size = min(len(replica.queue), self.config.profile.max_batch_size)
        batch = [replica.queue.popleft() for _ in range(size)]
        self.started[batch] = now
        seconds = self.config.profile.batch_seconds(
            int(self.trace.context_tokens[batch].sum()), int(self.trace.generated_tokens[batch].max()), size
        )
        replica.batch = batch
        self.push(now + seconds, _DONE, replica.index)

    def finish_batch(self, replica: _Replica, now: float) -> None:
        batch, replica.batch = replica.batch, []
        self.finished[batch] = now
        for i in batch:
            self.queue_sum_ms += (self.started[i] - self.trace.arrival_s[i]) * 1e3
            replica.recent.append((now, (now - self.trace.arrival_s[i]) * 1e3))
        self.completed += len(batch)
        if replica.queue:
            self.start_batch(replica, now)
        elif replica.draining:
            replica.deleted = now

    def became_ready(self, now: float) -> None:
        while self.unrouted and self.serving(now):
            self.arrive(self.unrouted.popleft(), now)

    def scale_to(self, desired: int, now: float) -> None:
        active = [r for r in self.alive() if not r.draining]
        for _ in range(desired - len(active)):
            replica = self.add_replica(now, now + self.config.cold_start_s)
            self.push(replica.ready_at, _READY, replica.index)
        # Like a ReplicaSet: remove not-ready pods first, then the newest.
        victims = sorted(active, key=lambda r: (r.ready(now), -r.created))[: max(0, len(active) - desired)]
        for replica in victims:
            replica.draining = True
            if not replica.batch and not replica.queue:
                replica.deleted = now

    def pod_quantiles(self, now: float) -> tuple[float, ...]:
        window = self.config.summary_window_s
        values = []
        for replica in self.alive():
            while replica.recent and replica.recent[0][0] < now - window:
                replica.recent.popleft()
            if replica.draining:
                continue
            lat = [v for _, v in replica.recent]
            values.append(float(np.quantile(lat, self.config.latency_quantile)) if lat else math.nan)
        return tuple(values)

    def pending(self) -> int:
        return len(self.unrouted) + sum(len(r.queue) for r in self.alive())

    def replica_seconds(self, until: float) -> float:
        return sum(min(r.deleted if r.deleted is not None else until, until) - r.created for r in self.replicas)


class _Scraper:
    """Turns cumulative pool counters into the per-object MetricSample a Prometheus query returns."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.history: deque[tuple[float, int, float]] = deque()

    def sample(self, pool: _Pool, now: float, pod_latency: tuple[float, ...]) -> MetricSample:
        self.history.append((now, pool.completed, pool.queue_sum_ms))
        while self.history[0][0] < now - self.config.rate_window_s:
            self.history.popleft()
        t0, n0, q0 = self.history[0]
        span = max(now - t0, self.config.scrape_interval_s)
        done = pool.completed - n0
        known = [v for v in pod_latency if not math.isnan(v)]
        return MetricSample(
            timestamp=now,
            request_rate=done / span,
            pending=float(pool.pending()),
            latency_ms=max(known) if known else math.nan,
            queue_ms=(pool.queue_sum_ms - q0) / done if done else math.nan,
            window_s=self.config.rate_window_s,
        )


def simulate(trace: Trace, controller: Controller, target_latency_ms: float, config: SimConfig) -> SimResult:
    """Replay `trace` against a pool scaled by `controller`; runs until every request is served."""
    pool = _Pool(trace, config)
    scraper = _Scraper(config)
    arrivals = trace.arrival_s
    rows: list[tuple[float, float, int, int, float]] = []
    scale_events = 0
    next_arrival = 0
    last_tick = 0.0
    pool.push(0.0, _TICK, 0)
    while pool.events:
        when, kind, _, payload = pool.events[0]
        if next_arrival < len(arrivals) and arrivals[next_arrival] < when:
            pool.arrive(next_arrival, float(arrivals[next_arrival]))
            next_arrival += 1
            continue
        heapq.heappop(pool.events)
        if kind == _DONE:
            pool.finish_batch(pool.replicas[payload], when)
        elif kind == _READY:
            pool.became_ready(when)
        else:
            pod_latency = pool.pod_quantiles(when)
            serving = pool.serving(when)
            current = len([r for r in pool.alive() if not r.draining])
            view = PoolView(when, current, len(serving), scraper.sample(pool, when, pod_latency), pod_latency)
            desired = controller.desired(view)
            if desired != current:
                scale_events += 1
                pool.scale_to(desired, when)
            rows.append(_timeline_row(pool, trace, last_tick, when, current, len(serving)))
            last_tick = when
            if next_arrival < len(arrivals) or pool.completed < len(arrivals):
                if when > trace.duration_s + MAX_DRAIN_S:
                    raise RuntimeError(f"{controller.name}: requests still unserved {MAX_DRAIN_S:.0f}s after the trace")
                pool.push(when + config.scrape_interval_s, _TICK, 0)
    return _result(trace, controller.name, target_latency_ms, pool, rows, scale_events)


def _timeline_row(
    pool: _Pool, trace: Trace, since: float, now: float, replicas: int, ready: int
) -> tuple[float, float, int, int, float]:
    arrived = np.searchsorted(trace.arrival_s, now, "right") - np.searchsorted(trace.arrival_s, since, "right")
    done = (pool.finished > since) & (pool.finished <= now)
    lat = (pool.finished[done] - trace.arrival_s[done]) * 1e3
    p95 = float(np.quantile(lat, 0.95)) if lat.size else math.nan
    return now, float(arrived) / max(now - since, 1e-9), replicas, ready, p95


def _result(
    trace: Trace,
    name: str,
    target_ms: float,
    pool: _Pool,
    rows: list[tuple[float, float, int, int, float]],
    scale_events: int,
) -> SimResult:
    latency_ms = (pool.finished - trace.arrival_s) * 1e3
    minute = (trace.arrival_s // 60).astype(np.int64)
    per_minute_ok = [np.quantile(latency_ms[minute == m], 0.95) <= target_ms for m in np.unique(minute)]
    columns = list(zip(*rows, strict=True))
    return SimResult(
        policy=name,
        trace=trace.name,
        target_latency_ms=target_ms,
        requests=len(latency_ms),
        slo_attainment=float(np.mean(latency_ms <= target_ms)),
        minutes_within_slo=float(np.mean(per_minute_ok)),
        replica_hours=pool.replica_seconds(trace.duration_s) / 3600,
        scale_events=scale_events,
        p95_latency_ms=float(np.quantile(latency_ms, 0.95)),
        timeline=Timeline(*(np.asarray(c) for c in columns)),
    )
