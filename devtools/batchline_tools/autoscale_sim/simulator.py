"""Discrete-event simulation of a gateway and a pool of in-flight (continuous) batching replicas.

Each replica is one engine that runs one forward pass ("step") at a time over every running
sequence: decoding sequences add one token each, and the prompts still being read share what is
left of the step's token budget (chunked prefill, first come first served). A step takes

    overhead + prefill_ms_per_token * prompt tokens in the step + decode_ms_per_seq * decoding
    sequences + kv_ms_per_1k_tokens * (KV tokens the decoding sequences attend to) / 1000.

A request is admitted into the running batch when a sequence slot is free and the KV cache can
hold its prompt and its whole output (reserved on admission, so nothing is ever preempted); a
request that could never fit (prompt + output above the KV cache) is refused, as the engine
refuses a prompt too long for its cache, and counts as a miss of every SLO. Its first token comes
with the step that reads the last of its prompt (TTFT); its time per output token (TPOT) is
(finish - first token) / (output tokens - 1).

The gateway sends each request to the ready replica with the fewest requests in flight (ties
rotating) while that replica has fewer than `max_in_flight_per_replica`; otherwise the request
waits at the gateway until a replica has room or a new one is ready. A replica being removed
takes nothing new and finishes what it has. New replicas are ready after a cold start.

Between two events a replica's running batch is constant, so runs of pure decode steps are
advanced in one go: the simulation costs per request and per tick, not per token.

Horizon: the simulation starts at the first arrival (t=0) with `initial_replicas` ready replicas
and ends when every request has finished (or was refused), or at `last arrival + max_drain_s`,
whichever is first; requests unfinished then count as misses (`unfinished`). The controllers
keep deciding every tick until the end, and replica-hours integrate every pod that exists,
starting and draining ones included, from t=0 to the end, drain time after the last arrival
included. Every figure in a result is therefore non-negative and finite.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from batchline.autoscaler.policy import MetricSample
from batchline_tools.autoscale_sim.trace import Trace

KvTokens = TypeVar("KvTokens", float, np.ndarray)  # one step, or one per request (`attainment_ceiling`)


@dataclass(frozen=True)
class ReplicaProfile:
    """One replica's engine: step cost, batch limits and KV cache (see docs/autoscaling.md)."""

    name: str = "h100-8b"
    step_overhead_ms: float = 6.0
    prefill_ms_per_token: float = 0.035
    decode_ms_per_seq: float = 0.05
    kv_ms_per_1k_tokens: float = 0.04
    max_batch_tokens: int = 8192  # tokens per step: decodes plus prompt chunks
    max_num_seqs: int = 128
    kv_cache_tokens: int = 400_000

    def step_ms(self, prefill_tokens: int, decoding: int, kv_tokens: KvTokens) -> KvTokens:
        return (
            self.step_overhead_ms
            + self.prefill_ms_per_token * prefill_tokens
            + self.decode_ms_per_seq * decoding
            + self.kv_ms_per_1k_tokens * kv_tokens / 1000
        )


# H100-class replica serving an 8B model in bf16 (derivation and sources in docs/autoscaling.md).
H100_8B = ReplicaProfile()
# SmolLM2-135M on this CPU under the in-flight engine's defaults (a step reads at most 512 tokens,
# 8 requests run together, 8,192 KV tokens); step costs fitted to bench/serving_bench.py's in-flight
# rows in docs/builder.md (one torch thread per engine, two cores): see docs/autoscaling.md.
CPU_SMOLLM2 = ReplicaProfile(
    name="cpu-smollm2-135m",
    step_overhead_ms=78.0,
    prefill_ms_per_token=0.65,
    decode_ms_per_seq=8.2,
    kv_ms_per_1k_tokens=1.0,
    max_batch_tokens=512,
    max_num_seqs=8,
    kv_cache_tokens=8192,
)
PROFILES = {p.name: p for p in (H100_8B, CPU_SMOLLM2)}


@dataclass(frozen=True)
class SimConfig:
    profile: ReplicaProfile = field(default_factory=ReplicaProfile)
    cold_start_s: float = 60.0
    scrape_interval_s: float = 15.0  # Prometheus scrape, and the controllers' tick
    rate_window_s: float = 60.0  # rate(...[1m]) and the histogram window
    summary_window_s: float = 60.0  # Triton summaries' sliding window (per pod, for the HPA)
    latency_quantile: float = 0.95
    initial_replicas: int = 1
    max_in_flight_per_replica: int = 64  # the gateway's --max-in-flight-per-replica default
    max_drain_s: float = 3600.0


@dataclass(frozen=True)
class Targets:
    """SLOs per request; None: not set. A request is within SLO when it meets every one set."""

    latency_ms: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def __post_init__(self) -> None:
        if all(v is None for v in (self.latency_ms, self.ttft_ms, self.tpot_ms)):
            raise ValueError("at least one target must be set")


@dataclass(frozen=True)
class PoolView:
    """What a controller sees at a tick."""

    now: float
    replicas: int  # the Deployment's spec.replicas
    ready: int
    sample: MetricSample  # aggregated over pods, as the Prometheus queries return it
    pod_latency_ms: tuple[float, ...]  # per non-terminating pod e2e quantile; NaN: no value
    pod_metrics_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)  # "latency"/"ttft"/"tpot"


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
    latency_ms: np.ndarray  # p95 end-to-end latency of the requests completed since the previous tick
    ttft_ms: np.ndarray  # p95 TTFT of the same requests


@dataclass(frozen=True)
class SimResult:
    policy: str
    trace: str
    targets: Targets
    requests: int
    slo_attainment: float  # within every target set (refused and unfinished requests miss)
    attainment_ceiling: float  # what no pool exceeds on this trace (`attainment_ceiling`)
    attainment: dict[str, float]  # per target set: "latency", "ttft", "tpot"
    minutes_within_slo: float
    replica_hours: float
    horizon_s: float
    scale_events: int
    peak_replicas: int
    p95_latency_ms: float
    p95_ttft_ms: float
    p95_tpot_ms: float
    refused: int
    unfinished: int
    timeline: Timeline

    @property
    def target_latency_ms(self) -> float:
        return self.targets.latency_ms or math.nan

    def metrics(self) -> dict[str, float | int | str | None]:
        out: dict[str, float | int | str | None] = {
            "policy": self.policy,
            "trace": self.trace,
            "requests": self.requests,
            "slo_attainment": round(self.slo_attainment, 4),
            "attainment_ceiling": round(self.attainment_ceiling, 4),
        }
        for name, value in (("latency", self.targets.latency_ms), ("ttft", self.targets.ttft_ms)):
            if value is not None:
                out[f"target_{name}_ms"] = value
        if self.targets.tpot_ms is not None:
            out["target_tpot_ms"] = self.targets.tpot_ms
        out.update({f"{k}_attainment": round(v, 4) for k, v in self.attainment.items()})
        out.update(
            {
                "minutes_within_slo": round(self.minutes_within_slo, 4),
                "replica_hours": round(self.replica_hours, 3),
                "horizon_s": round(self.horizon_s, 1),
                "scale_events": self.scale_events,
                "peak_replicas": self.peak_replicas,
                "p95_latency_ms": _finite(self.p95_latency_ms),
                "p95_ttft_ms": _finite(self.p95_ttft_ms),
                "p95_tpot_ms": _finite(self.p95_tpot_ms),
                "refused": self.refused,
                "unfinished": self.unfinished,
            }
        )
        return out


def _finite(value: float) -> float | None:
    """None (JSON null) when no request was served, never a made-up number."""
    return round(value, 1) if math.isfinite(value) else None


class _Replica:
    """One engine: a waiting queue, a running batch, and its clock (the end of its last step)."""

    def __init__(self, index: int, created: float, ready_at: float, pool: _Pool) -> None:
        self.index = index
        self.created = created
        self.ready_at = ready_at
        self.deleted: float | None = None
        self.draining = False
        self.pool = pool
        self.clock = ready_at
        self.waiting: deque[int] = deque()
        # running: request -> [prompt tokens left, output tokens left, KV tokens held]
        self.running: dict[int, list[int]] = {}
        self.kv_reserved = 0
        self.recent: deque[tuple[float, float, float, float]] = deque()  # (completion time, e2e, ttft, tpot) ms

    def ready(self, now: float) -> bool:
        return self.ready_at <= now

    def in_flight(self) -> int:
        return len(self.waiting) + len(self.running)

    def idle(self) -> bool:
        return not self.waiting and not self.running

    def submit(self, i: int, now: float) -> None:
        self.advance(now)
        if self.idle():
            self.clock = max(self.clock, now)
        self.waiting.append(i)

    def _admit(self) -> None:
        profile, trace = self.pool.config.profile, self.pool.trace
        while self.waiting and len(self.running) < profile.max_num_seqs:
            i = self.waiting[0]
            need = int(trace.context_tokens[i] + trace.generated_tokens[i])
            if self.kv_reserved + need > profile.kv_cache_tokens:
                return
            self.waiting.popleft()
            self.kv_reserved += need
            self.running[i] = [int(trace.context_tokens[i]), int(trace.generated_tokens[i]), 0]

    def advance(self, until: float) -> None:
        """Run the steps that start before `until`; a step in progress runs to its end."""
        profile, pool = self.pool.config.profile, self.pool
        while self.clock < until and (self.waiting or self.running):
            self._admit()
            if not self.running:
                return  # only refused-size requests would be left; they are removed on arrival
            decoding = [r for r in self.running.values() if r[0] == 0]
            prefilling = [(i, r) for i, r in self.running.items() if r[0] > 0]
            kv = float(sum(r[2] for r in decoding))
            if prefilling:  # after _admit, anything still waiting waits for a completion
                budget = max(0, profile.max_batch_tokens - len(decoding))
                chunks = []
                for i, r in prefilling:
                    take = min(r[0], budget)
                    if take <= 0:
                        break
                    budget -= take
                    chunks.append((i, r, take))
                if not chunks and not decoding:
                    return
                self.clock += profile.step_ms(sum(c for _, _, c in chunks), len(decoding), kv) / 1e3
                for r in decoding:
                    r[1] -= 1
                    r[2] += 1
                for i, r, take in chunks:
                    r[0] -= take
                    r[2] += take
                    if r[0] == 0:  # the step that reads the last of the prompt yields the first token
                        pool.first_token[i] = self.clock
                        r[1] -= 1
                        r[2] += 1
                self._finish()
                continue
            # Only decoding, nothing to admit: the batch is constant until the next completion.
            n = len(decoding)
            k = min(r[1] for r in decoding)
            step_s = profile.step_ms(0, n, kv + n * (k - 1) / 2) / 1e3
            steps = k if self.clock + k * step_s <= until else max(1, math.ceil((until - self.clock) / step_s))
            steps = min(steps, k)
            self.clock += steps * step_s
            for r in decoding:
                r[1] -= steps
                r[2] += steps
            self._finish()

    def _finish(self) -> None:
        pool = self.pool
        done = [i for i, r in self.running.items() if r[1] <= 0]
        for i in done:
            r = self.running.pop(i)
            self.kv_reserved -= int(pool.trace.context_tokens[i] + pool.trace.generated_tokens[i])
            del r
            pool.complete(i, self.clock, self)
        if done and not self.draining:
            pool.hand_over_held(self)


class _Pool:
    def __init__(self, trace: Trace, config: SimConfig) -> None:
        self.trace = trace
        self.config = config
        n = len(trace.arrival_s)
        self.first_token = np.full(n, np.nan)
        self.finished = np.full(n, np.nan)
        self.refused = np.zeros(n, dtype=bool)
        self.replicas: list[_Replica] = []  # every replica ever created
        self.live: list[_Replica] = []  # the ones not deleted yet
        self.held: deque[int] = deque()  # at the gateway: no ready replica with room
        self.rr = 0
        self.completed = 0
        self.prompt_done = 0
        self.output_done = 0
        self.done_log: deque[tuple[float, float, float, float]] = deque()  # (t, e2e, ttft, tpot) ms
        for _ in range(config.initial_replicas):
            self.add_replica(0.0, 0.0)

    def add_replica(self, now: float, ready_at: float) -> _Replica:
        replica = _Replica(len(self.replicas), now, ready_at, self)
        self.replicas.append(replica)
        self.live.append(replica)
        return replica

    def alive(self) -> list[_Replica]:
        if any(r.deleted is not None for r in self.live):
            self.live = [r for r in self.live if r.deleted is None]
        return self.live

    def serving(self, now: float) -> list[_Replica]:
        return [r for r in self.alive() if not r.draining and r.ready_at <= now]

    def advance(self, now: float) -> None:
        for replica in self.alive():
            if replica.ready_at <= now and (replica.waiting or replica.running):
                replica.advance(now)
        self.route_held(now)

    def route(self, i: int, now: float) -> bool:
        targets = self.serving(now)
        limit = self.config.max_in_flight_per_replica or math.inf
        for replica in targets:
            if replica.running or replica.waiting:
                replica.advance(now)
        loads = [(len(r.waiting) + len(r.running), r) for r in targets]
        room = [(n, r) for n, r in loads if n < limit]
        if not room:
            return False
        fewest = min(n for n, _ in room)
        best = [r for n, r in room if n == fewest]
        replica = best[self.rr % len(best)]
        self.rr += 1
        replica.submit(i, now)
        return True

    def arrive(self, i: int, now: float) -> None:
        profile = self.config.profile
        if self.trace.context_tokens[i] + self.trace.generated_tokens[i] > profile.kv_cache_tokens:
            self.refused[i] = True  # the engine refuses a prompt its cache can never hold
            return
        if self.held or not self.route(i, now):
            self.held.append(i)

    def route_held(self, now: float) -> None:
        while self.held and self.route(self.held[0], now):
            self.held.popleft()

    def hand_over_held(self, replica: _Replica) -> None:
        """The gateway's waiters take the room a completion just freed, at that moment (not at the
        next tick): requests held at the gateway that had arrived by then, oldest first."""
        limit = self.config.max_in_flight_per_replica or math.inf
        arrivals = self.trace.arrival_s
        while self.held and replica.in_flight() < limit and arrivals[self.held[0]] <= replica.clock:
            replica.waiting.append(self.held.popleft())

    def complete(self, i: int, now: float, replica: _Replica) -> None:
        trace = self.trace
        self.finished[i] = now
        e2e = (now - trace.arrival_s[i]) * 1e3
        ttft = (self.first_token[i] - trace.arrival_s[i]) * 1e3
        out = int(trace.generated_tokens[i])
        tpot = (now - self.first_token[i]) * 1e3 / (out - 1) if out > 1 else 0.0
        self.done_log.append((now, e2e, ttft, tpot))
        replica.recent.append((now, e2e, ttft, tpot))
        self.completed += 1
        self.prompt_done += int(trace.context_tokens[i])
        self.output_done += out
        if replica.draining and replica.idle():
            replica.deleted = max(now, replica.clock)

    def scale_to(self, desired: int, now: float) -> None:
        active = [r for r in self.alive() if not r.draining]
        for _ in range(desired - len(active)):
            self.add_replica(now, now + self.config.cold_start_s)
        # Like a ReplicaSet: remove not-ready pods first, then the newest.
        victims = sorted(active, key=lambda r: (r.ready(now), -r.created))[: max(0, len(active) - desired)]
        for replica in victims:
            replica.draining = True
            if replica.idle():
                replica.deleted = now

    def pod_quantiles(self, now: float) -> dict[str, tuple[float, ...]]:
        """Per non-terminating pod, the quantile of e2e latency, TTFT and TPOT over the summary window."""
        window = self.config.summary_window_s
        values: dict[str, list[float]] = {"latency": [], "ttft": [], "tpot": []}
        for replica in self.alive():
            while replica.recent and replica.recent[0][0] < now - window:
                replica.recent.popleft()
            if replica.draining:
                continue
            for column, kind in enumerate(values, start=1):
                values[kind].append(_quantile([row[column] for row in replica.recent], self.config.latency_quantile))
        return {k: tuple(v) for k, v in values.items()}

    def waiting(self) -> int:
        return len(self.held) + sum(len(r.waiting) for r in self.alive())

    def running(self) -> int:
        return sum(len(r.running) for r in self.alive())

    def replica_seconds(self, until: float) -> float:
        return sum(
            max(0.0, min(r.deleted if r.deleted is not None else until, until) - r.created) for r in self.replicas
        )


def _quantile(values: list[float], q: float) -> float:
    """numpy's default (linear) quantile, without numpy's overhead for short lists; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class _Scraper:
    """Turns pool counters into the per-object MetricSample the Prometheus queries return."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.history: deque[tuple[float, int, int, int]] = deque()

    def sample(self, pool: _Pool, now: float) -> MetricSample:
        self.history.append((now, pool.completed, pool.prompt_done, pool.output_done))
        window = self.config.rate_window_s
        while self.history[0][0] < now - window:
            self.history.popleft()
        while pool.done_log and pool.done_log[0][0] < now - window:
            pool.done_log.popleft()
        t0, n0, p0, o0 = self.history[0]
        span = max(now - t0, self.config.scrape_interval_s)
        q = self.config.latency_quantile
        if pool.done_log:
            log = np.asarray(pool.done_log)
            e2e, ttft, tpot = (float(np.quantile(log[:, c], q)) for c in (1, 2, 3))
            ttft_mean, tpot_mean = float(log[:, 2].mean()), float(log[:, 3].mean())
        else:
            e2e = ttft = tpot = ttft_mean = tpot_mean = math.nan
        return MetricSample(
            timestamp=now,
            request_rate=(pool.completed - n0) / span,
            pending=float(pool.waiting()),
            latency_ms=e2e,
            window_s=window,
            prompt_tokens_rate=(pool.prompt_done - p0) / span,
            output_tokens_rate=(pool.output_done - o0) / span,
            running=float(pool.running()),
            ttft_ms=ttft,
            tpot_ms=tpot,
            ttft_mean_ms=ttft_mean,
            tpot_mean_ms=tpot_mean,
        )


def simulate(trace: Trace, controller: Controller, targets: Targets | float, config: SimConfig) -> SimResult:
    """Replay `trace` against a pool scaled by `controller` (horizon: see the module docstring)."""
    if not isinstance(targets, Targets):
        targets = Targets(latency_ms=float(targets))
    pool = _Pool(trace, config)
    scraper = _Scraper(config)
    arrivals = trace.arrival_s
    n = len(arrivals)
    rows: list[tuple[float, float, int, int, float, float]] = []
    scale_events = 0
    peak = config.initial_replicas
    next_arrival = 0
    last_tick = 0.0
    tick = 0.0
    end_by = trace.duration_s + config.max_drain_s
    pending_ready: list[float] = []
    while True:
        # Arrivals and readiness before this tick, in time order.
        while True:
            t_arr = arrivals[next_arrival] if next_arrival < n else math.inf
            t_ready = min(pending_ready) if pending_ready else math.inf
            if min(t_arr, t_ready) >= tick:
                break
            if t_ready <= t_arr:
                pending_ready.remove(t_ready)
                pool.advance(t_ready)
            else:
                pool.arrive(next_arrival, float(t_arr))
                next_arrival += 1
        pool.advance(tick)
        pending_ready = [r for r in pending_ready if r > tick]
        pod_metrics = pool.pod_quantiles(tick) if getattr(controller, "reads_pods", False) else {}
        pod_latency = pod_metrics.get("latency", ())
        serving = pool.serving(tick)
        current = len([r for r in pool.alive() if not r.draining])
        sample = scraper.sample(pool, tick)
        view = PoolView(tick, current, len(serving), sample, pod_latency, pod_metrics)
        desired = max(0, controller.desired(view))
        if desired != current:
            scale_events += 1
            pool.scale_to(desired, tick)
            pending_ready.extend(r.ready_at for r in pool.alive() if r.ready_at > tick)
            pending_ready = sorted(set(pending_ready))
        peak = max(peak, len(pool.alive()))
        rows.append(_timeline_row(pool, trace, last_tick, tick, current, len(serving)))
        last_tick = tick
        settled = int(np.count_nonzero(~np.isnan(pool.finished))) + int(pool.refused.sum())
        if (next_arrival >= n and settled >= n) or tick >= end_by:
            break
        tick += config.scrape_interval_s
    end = tick
    for replica in pool.alive():  # what is still running at the end stops here
        replica.deleted = end
    return _result(trace, controller.name, targets, pool, rows, scale_events, peak, end)


def _timeline_row(
    pool: _Pool, trace: Trace, since: float, now: float, replicas: int, ready: int
) -> tuple[float, float, int, int, float, float]:
    arrived = np.searchsorted(trace.arrival_s, now, "right") - np.searchsorted(trace.arrival_s, since, "right")
    done = (pool.finished > since) & (pool.finished <= now)
    lat = (pool.finished[done] - trace.arrival_s[done]) * 1e3
    ttft = (pool.first_token[done] - trace.arrival_s[done]) * 1e3
    p95 = float(np.quantile(lat, 0.95)) if lat.size else math.nan
    t95 = float(np.quantile(ttft, 0.95)) if ttft.size else math.nan
    return now, float(arrived) / max(now - since, 1e-9), replicas, ready, p95, t95


def request_figures(trace: Trace, pool_first: np.ndarray, pool_finished: np.ndarray) -> dict[str, np.ndarray]:
    """Per request: e2e, TTFT and TPOT in ms; inf where the request never finished or was refused."""
    e2e = np.where(np.isnan(pool_finished), np.inf, (pool_finished - trace.arrival_s) * 1e3)
    ttft = np.where(np.isnan(pool_first), np.inf, (pool_first - trace.arrival_s) * 1e3)
    out = trace.generated_tokens.astype(np.float64)
    decode = (pool_finished - pool_first) * 1e3 / np.maximum(out - 1, 1)
    tpot = np.where(np.isnan(pool_finished), np.inf, np.where(out > 1, decode, 0.0))
    return {"latency": e2e, "ttft": ttft, "tpot": tpot}


def attainment_ceiling(trace: Trace, targets: Targets, profile: ReplicaProfile) -> float:
    """The SLO attainment no pool of `profile` replicas can exceed on `trace`, however many it has.

    A request alone on a ready replica gets every step to itself: its prompt is read in chunks of
    `max_batch_tokens`, and each decode step costs the overhead, one sequence and its own KV
    tokens. A step shared with other requests only takes longer, so a request that misses a target
    even so (or that the KV cache cannot hold) misses it in every pool.
    """
    prompt, out = trace.context_tokens.astype(np.float64), trace.generated_tokens.astype(np.float64)
    ttft = np.ceil(prompt / profile.max_batch_tokens) * profile.step_overhead_ms + profile.prefill_ms_per_token * prompt
    # Decode step j (1..out-1) attends to prompt + j KV tokens: their mean is prompt + out / 2.
    tpot = np.where(out > 1, profile.step_ms(0, 1, prompt + out / 2), 0.0)
    figures = {"latency": ttft + np.maximum(out - 1, 0) * tpot, "ttft": ttft, "tpot": tpot}
    limits = {"latency": targets.latency_ms, "ttft": targets.ttft_ms, "tpot": targets.tpot_ms}
    ok = prompt + out <= profile.kv_cache_tokens
    for kind, limit in limits.items():
        if limit is not None:
            ok &= figures[kind] <= limit
    return float(np.mean(ok)) if len(ok) else 1.0


def _result(
    trace: Trace,
    name: str,
    targets: Targets,
    pool: _Pool,
    rows: list[tuple[float, float, int, int, float, float]],
    scale_events: int,
    peak: int,
    end: float,
) -> SimResult:
    figures = request_figures(trace, pool.first_token, pool.finished)
    limits = {"latency": targets.latency_ms, "ttft": targets.ttft_ms, "tpot": targets.tpot_ms}
    ok_by = {k: figures[k] <= v for k, v in limits.items() if v is not None}
    ok = np.logical_and.reduce(list(ok_by.values()))
    minute = (trace.arrival_s // 60).astype(np.int64)
    per_minute_ok = [np.mean(ok[minute == m]) >= 0.95 for m in np.unique(minute)]
    columns = list(zip(*rows, strict=True))
    served = ~np.isnan(pool.finished)

    def p95(values: np.ndarray) -> float:
        return float(np.quantile(values[served], 0.95)) if served.any() else math.nan

    return SimResult(
        policy=name,
        trace=trace.name,
        targets=targets,
        requests=len(ok),
        slo_attainment=float(np.mean(ok)),
        attainment_ceiling=attainment_ceiling(trace, targets, pool.config.profile),
        attainment={k: float(np.mean(v)) for k, v in ok_by.items()},
        minutes_within_slo=float(np.mean(per_minute_ok)),
        replica_hours=pool.replica_seconds(end) / 3600,
        horizon_s=end,
        scale_events=scale_events,
        peak_replicas=peak,
        p95_latency_ms=p95(figures["latency"]),
        p95_ttft_ms=p95(figures["ttft"]),
        p95_tpot_ms=p95(figures["tpot"]),
        refused=int(pool.refused.sum()),
        unfinished=int(np.count_nonzero(~served & ~pool.refused)),
        timeline=Timeline(*(np.asarray(c) for c in columns)),
    )
