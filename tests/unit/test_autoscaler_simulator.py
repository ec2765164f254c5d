"""The trace-driven simulator, the HPA/KEDA baselines and `batchline autoscale simulate`."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from batchline.autoscaler.spec import AutoscalingSpec
from batchline.cli import main
from batchline_tools.autoscale_sim.baselines import (
    HpaCore,
    external_average_value_replicas,
    pods_metric_replicas,
    simulate_policy,
)
from batchline_tools.autoscale_sim.plot import plot_results
from batchline_tools.autoscale_sim.simulator import (
    CPU_SMOLLM2,
    PoolView,
    SimConfig,
    Targets,
    attainment_ceiling,
    simulate,
)
from batchline_tools.autoscale_sim.trace import Trace, load_trace, save_trace

METRICS = (
    "slo_attainment",
    "attainment_ceiling",
    "latency_attainment",
    "minutes_within_slo",
    "replica_hours",
    "horizon_s",
    "scale_events",
    "p95_latency_ms",
    "p95_ttft_ms",
    "refused",
)
SPEC = AutoscalingSpec(min_replicas=1, max_replicas=12, target_latency_ms=10_000)


def constant(rate: float, seconds: float, context: int = 1500, generated: int = 60) -> Trace:
    n = int(rate * seconds)
    return Trace("constant", np.arange(n) / rate, np.full(n, context), np.full(n, generated))


@pytest.fixture
def trace_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    gaps = np.concatenate([rng.exponential(1 / 0.5, 300), rng.exponential(1 / 4.0, 1200), rng.exponential(1.0, 300)])
    stamps = np.cumsum(gaps)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t in stamps:
        whole = int(t)
        lines.append(f"2023-11-16 18:{whole // 60 % 60:02d}:{whole % 60:02d}.{int((t % 1) * 1e7):07d},1200,80")
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_trace_reads_azure_timestamps_and_compresses_time(trace_csv: Path) -> None:
    trace = load_trace(trace_csv)
    assert trace.arrival_s[0] == 0 and np.all(np.diff(trace.arrival_s) >= 0)
    assert load_trace(trace_csv, time_scale=2.0).duration_s == pytest.approx(trace.duration_s / 2)


def test_a_saved_trace_reads_back_the_same(trace_csv: Path, tmp_path: Path) -> None:
    trace = load_trace(trace_csv)
    again = load_trace(save_trace(trace, tmp_path / "again.csv"))
    assert again.name == "again" and len(again.arrival_s) == len(trace.arrival_s)
    np.testing.assert_allclose(again.arrival_s, trace.arrival_s, atol=1e-6)  # the CSV keeps microseconds
    assert np.array_equal(again.context_tokens, trace.context_tokens)
    assert np.array_equal(again.generated_tokens, trace.generated_tokens)


def test_trace_without_required_columns_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("TIMESTAMP,Tokens\n2023-11-16 18:00:00,5\n")
    with pytest.raises(ValueError, match="ContextTokens"):
        load_trace(path)


def burst(n: int, context: int, generated: int, at: float = 0.0) -> Trace:
    return Trace("burst", np.full(n, at), np.full(n, context), np.full(n, generated))


def test_in_flight_batching_serves_concurrent_requests_together() -> None:
    """One CPU replica: eight requests at once finish far sooner than eight one after another, but
    each waits for the prompts ahead of it (TTFT), and decodes slower in a fuller batch (TPOT)."""
    config = SimConfig(profile=CPU_SMOLLM2, initial_replicas=1)
    alone = simulate(burst(1, 200, 50), ScaleOnceTo(1), Targets(latency_ms=1e9), config)
    eight = simulate(burst(8, 200, 50), ScaleOnceTo(1), Targets(latency_ms=1e9), config)
    assert eight.p95_latency_ms < 0.7 * 8 * alone.p95_latency_ms
    assert eight.p95_ttft_ms > 3 * alone.p95_ttft_ms  # later prompts wait for earlier chunks
    assert eight.p95_tpot_ms > alone.p95_tpot_ms
    assert alone.p95_tpot_ms == pytest.approx(CPU_SMOLLM2.step_ms(0, 1, 225), rel=0.05)


def test_the_kv_cache_limits_the_batch_and_refuses_what_can_never_fit() -> None:
    config = SimConfig(profile=CPU_SMOLLM2, initial_replicas=1)  # 8,192 KV tokens per replica
    trace = Trace("kv", np.zeros(4), np.array([3000, 3000, 3000, 9000]), np.full(4, 100))
    result = simulate(trace, ScaleOnceTo(1), Targets(latency_ms=1e9), config)
    assert result.refused == 1 and result.unfinished == 0
    assert result.slo_attainment == pytest.approx(0.75)  # the refused request misses its SLO
    # Two of three fit at once: the third starts only when one of them frees its cache.
    three = Trace("kv3", np.zeros(3), np.full(3, 3000), np.full(3, 100))
    small = simulate(three, ScaleOnceTo(1), Targets(latency_ms=1e9), config)
    roomy_config = replace(config, profile=replace(CPU_SMOLLM2, kv_cache_tokens=20_000))
    roomy = simulate(three, ScaleOnceTo(1), Targets(latency_ms=1e9), roomy_config)
    assert small.p95_ttft_ms > roomy.p95_ttft_ms


def test_a_request_held_at_the_gateway_starts_when_a_slot_frees_not_at_the_next_tick() -> None:
    """One replica that takes one request at a time: the other nine wait at the gateway and run
    back to back, so the p95 (linear, of 1..10 service times) is 9.55 service times, far inside one
    15 s tick."""
    config = SimConfig(profile=CPU_SMOLLM2, initial_replicas=1, max_in_flight_per_replica=1)
    one = simulate(burst(1, 100, 5), ScaleOnceTo(1), Targets(latency_ms=1e9), config)
    ten = simulate(burst(10, 100, 5), ScaleOnceTo(1), Targets(latency_ms=1e9), config)
    service_s = one.p95_latency_ms / 1e3
    assert service_s < 1.0
    assert ten.p95_latency_ms / 1e3 == pytest.approx(9.55 * service_s, rel=0.05)
    assert ten.p95_latency_ms / 1e3 < config.scrape_interval_s


def test_the_attainment_ceiling_is_what_requests_reach_alone_and_no_pool_beats_it() -> None:
    """Prompts of 100..3,000 tokens and outputs of 2..200, plus one the KV cache cannot hold: spaced
    a minute apart, each runs alone on one replica and the pool reaches the ceiling exactly; all at
    once, sharing the replica, it reaches less."""
    rng = np.random.default_rng(3)
    prompts = np.append(rng.integers(100, 3000, 40), 9000)
    outputs = np.append(rng.integers(2, 200, 40), 10)
    config = SimConfig(profile=CPU_SMOLLM2, initial_replicas=1)
    spaced = Trace("spaced", np.arange(41) * 60.0, prompts, outputs)
    together = Trace("together", np.zeros(41), prompts, outputs)
    for targets in (Targets(ttft_ms=1000), Targets(latency_ms=10_000), Targets(ttft_ms=2000, tpot_ms=88)):
        ceiling = attainment_ceiling(spaced, targets, CPU_SMOLLM2)
        assert 0.2 < ceiling < 0.9  # the targets split the requests
        alone = simulate(spaced, ScaleOnceTo(1), targets, config)
        assert alone.slo_attainment == pytest.approx(ceiling) and alone.attainment_ceiling == ceiling
        assert simulate(together, ScaleOnceTo(1), targets, config).slo_attainment < ceiling


def awkward_traces() -> list[Trace]:
    """A load that stops dead, a long idle tail after a little traffic, and prompts too big for the cache."""
    rng = np.random.default_rng(3)
    heavy = np.sort(rng.uniform(0, 600, 6000))
    stop = Trace("abrupt", heavy, rng.integers(500, 4000, 6000), rng.integers(20, 400, 6000))
    idle = np.concatenate([np.sort(rng.uniform(0, 120, 300)), [3000.0]])
    tail = Trace("idle-tail", idle, np.full(301, 1000), np.full(301, 100))
    huge = Trace("huge", np.arange(200) * 0.5, np.where(np.arange(200) % 10 == 0, 500_000, 30_000), np.full(200, 50))
    refused = Trace("all-refused", np.arange(5) * 10.0, np.full(5, 1_000_000), np.full(5, 10))
    return [stop, tail, huge, refused]


@pytest.mark.parametrize("policy", ["batchline", "hpa", "keda", "concurrency"])
def test_no_impossible_figure_on_abrupt_idle_or_huge_traces(policy: str) -> None:
    spec = AutoscalingSpec(min_replicas=1, max_replicas=200, target_time_to_first_token_ms=2000)
    for trace in awkward_traces():
        result = simulate_policy(trace, policy, spec, SimConfig())
        metrics = result.metrics()
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        assert all(math.isfinite(v) and v >= 0 for v in numbers.values()), (trace.name, metrics)
        assert 0 <= result.slo_attainment <= 1 and result.replica_hours > 0
        assert result.horizon_s >= trace.duration_s
        assert result.refused + result.unfinished <= result.requests
        if trace.name == "huge":
            assert result.refused == 20  # 500k-token prompts: more than the KV cache holds
        if trace.name == "all-refused":  # nothing served: no quantile to report, and none made up
            assert result.slo_attainment == 0 and metrics["p95_ttft_ms"] is None
        if policy == "batchline":
            tl = result.timeline
            # No replica is added once requests stop arriving (after the rate window that shows it).
            quiet = tl.replicas[tl.t > (600 + 60 if trace.name == "abrupt" else 180)]
            if trace.name != "huge":
                assert np.all(np.diff(quiet) <= 0), (trace.name, quiet)


@pytest.mark.parametrize("policy", ["batchline", "hpa", "keda", "concurrency"])
def test_every_policy_reports_the_metrics(trace_csv: Path, policy: str) -> None:
    result = simulate_policy(load_trace(trace_csv), policy, SPEC, SimConfig())
    metrics = result.metrics()
    assert all(name in metrics for name in METRICS)
    assert 0 <= metrics["slo_attainment"] <= metrics["attainment_ceiling"] <= 1
    assert 0 <= metrics["minutes_within_slo"] <= 1
    assert metrics["replica_hours"] > 0 and metrics["requests"] == len(load_trace(trace_csv).arrival_s)
    assert result.timeline.replicas.max() <= SPEC.max_replicas


class ScaleOnceTo:
    """Asks for `n` replicas at the first tick, then holds: shows the cold start."""

    name = "fixed"

    def __init__(self, n: int) -> None:
        self.n = n
        self.views: list[PoolView] = []

    def desired(self, view: PoolView) -> int:
        self.views.append(view)
        return self.n


def test_new_replicas_are_ready_only_after_the_cold_start() -> None:
    controller = ScaleOnceTo(3)
    simulate(constant(1.0, 300), controller, 10_000, SimConfig(cold_start_s=60))
    ready = {v.now: v.ready for v in controller.views}
    assert ready[15.0] == 1 and ready[45.0] == 1 and ready[60.0] == 3


def test_batchline_settles_to_zero_scale_events_at_constant_load() -> None:
    result = simulate_policy(constant(3.0, 3600), "batchline", SPEC, SimConfig())
    tl = result.timeline
    late = tl.replicas[tl.t >= 1800]
    assert np.count_nonzero(late[1:] != late[:-1]) == 0
    assert result.slo_attainment > 0.9


def test_hpa_pods_metric_rule() -> None:
    assert pods_metric_replicas((20.0, 20.0), target=10.0, current=2) == 4
    assert pods_metric_replicas((10.5, 9.8), target=10.0, current=2) == 2  # inside the 10% tolerance
    assert pods_metric_replicas((float("nan"), float("nan")), target=10.0, current=2) is None
    # Scale-up: a pod with no value counts as 0, so 2 ready pods at 3x target ask for 6, not 9.
    assert pods_metric_replicas((30.0, 30.0, float("nan")), target=10.0, current=3) == 6
    # Scale-down: a pod with no value counts as at target, which damps the drop.
    assert pods_metric_replicas((2.0, float("nan")), target=10.0, current=2) == 2


def test_hpa_behaviour_defaults_rate_limit_and_stabilize() -> None:
    core = HpaCore(min_replicas=1, max_replicas=50)
    assert core.reconcile(0.0, current=2, metric_desired=40) == 6  # max(+4 pods, +100%) per 15 s
    assert core.reconcile(15.0, current=6, metric_desired=40) == 12
    assert core.reconcile(30.0, current=12, metric_desired=1) == 12  # 300 s down-stabilization
    assert core.reconcile(340.0, current=12, metric_desired=1) == 1
    assert core.reconcile(355.0, current=1, metric_desired=None) == 1


def test_keda_average_value_rule() -> None:
    assert external_average_value_replicas(50.0, target=5.0, status_replicas=2) == 10
    assert external_average_value_replicas(10.5, target=5.0, status_replicas=2) == 2
    assert external_average_value_replicas(0.0, target=5.0, status_replicas=4) == 0


def test_cli_simulate_prints_one_json_object_and_a_plot(
    trace_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "plot.png"
    argv = ["autoscale", "simulate", "--trace", str(trace_csv), "--policy", "keda"]
    code = main([*argv, "--target-latency-ms", "8000", "--json", "--plot", str(png)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert all(name in out for name in METRICS) and out["policy"] == "keda"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_a_bad_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "none.csv")
    assert main(["autoscale", "simulate", "--trace", missing, "--policy", "hpa", "--target-latency-ms", "1"]) == 2
    assert "error" in capsys.readouterr().err


def test_plot_compares_policies(trace_csv: Path, tmp_path: Path) -> None:
    trace = load_trace(trace_csv)
    results = [simulate_policy(trace, p, SPEC, SimConfig()) for p in ("batchline", "hpa")]
    assert plot_results(results, tmp_path / "cmp.png").stat().st_size > 10_000
