"""Batchline's autoscaling policy against the Kubernetes HPA and KEDA on replayed traces.

Runs every policy on every trace at one latency target, prints a markdown table with ratios
against the HPA and whether the goal is met (SLO attainment >= HPA + 10 points at <= HPA's
replica-hours, or equal attainment at <= 0.8x), then a constant-load check: scale events in
the second hour of a steady two-hour load, which should be zero once settled.

    .venv/bin/python bench/autoscale_compare.py [--target-latency-ms 15000] [--plot-dir DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from batchline.autoscaler.spec import AutoscalingSpec
from batchline_tools.autoscale_sim.baselines import POLICIES, simulate_policy
from batchline_tools.autoscale_sim.simulator import SimConfig, SimResult
from batchline_tools.autoscale_sim.trace import Trace, load_trace

TRACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "traces"
DEFAULT_TRACES = [TRACES_DIR / f"AzureLLMInferenceTrace_{name}.csv" for name in ("code", "conv")]
# Steady loads for the settling check: (requests/s, prompt tokens, generated tokens).
CONSTANT_LOADS = ((2.0, 1500, 60), (6.0, 1500, 60), (4.0, 1000, 200))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", action="append", type=Path, help="CSV trace (repeatable)")
    parser.add_argument("--target-latency-ms", type=int, default=15000)
    parser.add_argument("--max-replicas", type=int, default=20)
    parser.add_argument("--plot-dir", type=Path, help="write one PNG per trace here")
    args = parser.parse_args()
    spec = AutoscalingSpec(min_replicas=1, max_replicas=args.max_replicas, target_latency_ms=args.target_latency_ms)
    started = time.monotonic()
    print(
        f"target {args.target_latency_ms} ms (p95), replicas 1..{args.max_replicas}, cold start "
        f"{spec.cold_start_seconds}s, scrape/sync 15s\n"
    )
    print(
        "| trace | policy | SLO attainment | minutes within SLO | replica-hours | scale events | p95 ms "
        "| attainment vs HPA | replica-h vs HPA | goal |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    all_met, plots = True, []
    for path in args.trace or DEFAULT_TRACES:
        trace = load_trace(path)
        results = {policy: simulate_policy(trace, policy, spec, SimConfig()) for policy in POLICIES}
        for policy, result in results.items():
            goal = _goal(result, results["hpa"]) if policy != "hpa" else ""
            all_met &= policy != "batchline" or goal == "met"
            print(_row(result, results["hpa"], goal))
        if args.plot_dir:
            from batchline_tools.autoscale_sim.plot import plot_results

            plots.append(plot_results(list(results.values()), args.plot_dir / f"{trace.name}.png"))
    print(f"\nbatchline goal on every trace: {'met' if all_met else 'NOT met'}")
    print("".join(f"plot: {path}\n" for path in plots))
    print("| constant load | policy | scale events, first hour | scale events, second hour | replicas at end |")
    print("|---|---|---|---|---|")
    for rate, context, generated in CONSTANT_LOADS:
        trace = _constant_trace(rate, context, generated)
        for policy in POLICIES:
            tl = simulate_policy(trace, policy, spec, SimConfig()).timeline
            first, second = _changes(tl.replicas[tl.t < 3600]), _changes(tl.replicas[tl.t >= 3600])
            label = f"{rate:g} req/s, {context}/{generated} tokens"
            print(f"| {label} | {policy} | {first} | {second} | {tl.replicas[-1]} |")
    print(f"\n({time.monotonic() - started:.1f}s)")
    return 0


def _goal(result: SimResult, hpa: SimResult) -> str:
    gain = result.slo_attainment - hpa.slo_attainment
    cost = result.replica_hours / hpa.replica_hours
    met = (gain >= 0.10 and cost <= 1.0) or (gain >= 0 and cost <= 0.8)
    return "met" if met else "not met"


def _row(result: SimResult, hpa: SimResult, goal: str) -> str:
    gain = (result.slo_attainment - hpa.slo_attainment) * 100
    cost = result.replica_hours / hpa.replica_hours
    return (
        f"| {result.trace} | {result.policy} | {result.slo_attainment:.1%} | {result.minutes_within_slo:.1%} "
        f"| {result.replica_hours:.2f} | {result.scale_events} | {result.p95_latency_ms:,.0f} "
        f"| {gain:+.1f} pts | {cost:.2f}x | {goal} |"
    )


def _constant_trace(rate: float, context: int, generated: int, seconds: float = 7200.0) -> Trace:
    n = int(rate * seconds)
    return Trace(f"constant-{rate:g}rps", np.arange(n) / rate, np.full(n, context), np.full(n, generated))


def _changes(replicas: np.ndarray) -> int:
    return int(np.count_nonzero(replicas[1:] != replicas[:-1]))


if __name__ == "__main__":
    raise SystemExit(main())
