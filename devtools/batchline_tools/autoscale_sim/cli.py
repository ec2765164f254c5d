"""`batchline autoscale simulate`: replay a request trace under one autoscaling policy."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from batchline.autoscaler.spec import AutoscalingSpec
from batchline_tools.autoscale_sim.baselines import DEFAULT_KEDA_THRESHOLD, POLICIES, simulate_policy
from batchline_tools.autoscale_sim.simulator import PROFILES, SimConfig
from batchline_tools.autoscale_sim.trace import load_trace

# High enough that no policy is capped on the traces we know; the output says when one was.
DEFAULT_MAX_REPLICAS = 400


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("autoscale", help="autoscaler tools", description=__doc__)
    sub = parser.add_subparsers(dest="autoscale_command", required=True, metavar="SUBCOMMAND")
    sim = sub.add_parser(
        "simulate",
        help="replay a trace against a simulated Triton pool under one policy",
        description="Replay a CSV trace (TIMESTAMP,ContextTokens,GeneratedTokens) against a simulated "
        "pool of in-flight batching replicas scaled by one policy, and report SLO attainment (overall and per "
        "SLO) and cost. At least one target is needed.",
    )
    sim.add_argument("--trace", required=True, help="CSV with TIMESTAMP,ContextTokens,GeneratedTokens")
    sim.add_argument("--policy", required=True, choices=POLICIES)
    sim.add_argument("--target-latency-ms", type=int, help="end-to-end latency SLO per request")
    sim.add_argument("--target-ttft-ms", type=int, help="time-to-first-token SLO per request")
    sim.add_argument("--target-tpot-ms", type=int, help="time-per-output-token SLO per request")
    sim.add_argument("--latency-quantile", type=float, default=0.95, help="quantile the policies steer")
    sim.add_argument("--profile", default="h100-8b", choices=sorted(PROFILES), help="replica engine profile")
    sim.add_argument("--min-replicas", type=int, default=1)
    sim.add_argument("--max-replicas", type=int, default=DEFAULT_MAX_REPLICAS)
    sim.add_argument("--initial-replicas", type=int, help="replicas at t=0 (default: --min-replicas)")
    sim.add_argument("--cold-start-s", type=int, default=60, help="seconds from scale-up to a ready replica")
    sim.add_argument("--time-scale", type=float, default=1.0, help=">1 compresses the trace's time")
    sim.add_argument("--keda-threshold", type=float, default=DEFAULT_KEDA_THRESHOLD, help="pending per replica")
    sim.add_argument("--concurrency-target", type=float, help="in flight per replica (default: 70%% of slots)")
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.add_argument("--plot", help="write a PNG of load, replicas and latency")
    sim.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    targets = (args.target_latency_ms, args.target_ttft_ms, args.target_tpot_ms)
    if all(t is None for t in targets):
        print("error: set at least one of --target-latency-ms, --target-ttft-ms, --target-tpot-ms", file=sys.stderr)
        return 2
    try:
        spec = AutoscalingSpec(
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            target_latency_ms=args.target_latency_ms,
            target_time_to_first_token_ms=args.target_ttft_ms,
            target_time_per_output_token_ms=args.target_tpot_ms,
            latency_quantile=args.latency_quantile,
            cold_start_seconds=args.cold_start_s,
        )
        trace = load_trace(args.trace, time_scale=args.time_scale)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    initial = args.initial_replicas if args.initial_replicas is not None else max(1, spec.min_replicas)
    config = SimConfig(profile=PROFILES[args.profile], initial_replicas=initial)
    result = simulate_policy(trace, args.policy, spec, config, args.keda_threshold, args.concurrency_target)
    metrics = result.metrics()
    metrics["max_replicas"] = spec.max_replicas
    metrics["capped"] = result.peak_replicas >= spec.max_replicas  # the comparison is unfair when True
    if args.plot:
        from batchline_tools.autoscale_sim.plot import plot_results  # matplotlib only when asked for

        metrics["plot"] = str(plot_results([result], args.plot))
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key}: {value}")
    return 0
