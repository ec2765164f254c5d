"""The trace-driven simulator, the HPA/KEDA baselines and `batchline autoscale simulate`."""

from __future__ import annotations

import json
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
from batchline_tools.autoscale_sim.simulator import PoolView, ReplicaProfile, SimConfig, simulate
from batchline_tools.autoscale_sim.trace import Trace, load_trace

METRICS = ("slo_attainment", "minutes_within_slo", "replica_hours", "scale_events", "p95_latency_ms")
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


def test_trace_without_required_columns_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("TIMESTAMP,Tokens\n2023-11-16 18:00:00,5\n")
    with pytest.raises(ValueError, match="ContextTokens"):
        load_trace(path)


def test_batching_raises_throughput_and_longer_requests_take_longer() -> None:
    profile = ReplicaProfile()
    one = profile.batch_seconds(1000, 100, 1)
    eight = profile.batch_seconds(8000, 100, 8)
    assert eight < 8 * one  # a batch of 8 beats 8 batches of 1
    assert profile.batch_seconds(1000, 200, 1) > one and profile.batch_seconds(4000, 100, 1) > one


@pytest.mark.parametrize("policy", ["batchline", "hpa", "keda"])
def test_every_policy_reports_the_metrics(trace_csv: Path, policy: str) -> None:
    result = simulate_policy(load_trace(trace_csv), policy, SPEC, SimConfig())
    metrics = result.metrics()
    assert all(name in metrics for name in METRICS)
    assert 0 <= metrics["slo_attainment"] <= 1 and 0 <= metrics["minutes_within_slo"] <= 1
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
