"""How much of `autoscale_compare.py`'s verdicts survives moving every arrival by at most 1 ms.

A millisecond changes nothing a user would notice, but a simulated pool is a chain of discrete
decisions (a capacity cut or not, a replica more or not), so one run's figures can move with it.
This replays every case and SLO of `autoscale_compare.py` on the trace as it is and on `--seeds`
copies whose arrivals are each moved by a uniform draw in [-1, +1] ms (seeded), under every policy,
and reports, per policy, the spread of attainment and replica-hours, per baseline how many
case x SLO pairs meet the goal in every copy, in some, or in none, and, per role, how many
case x SLO x baseline x copy meet it. The tuning trace's total is what chooses between policy
variants (`--case code`, under a minute): one run's verdicts move with a millisecond, the total
over the copies much less (see docs/autoscaling.md, Method).

    .venv/bin/python bench/autoscale_stability.py [--seeds 4] [--case NAME ...] [--target LABEL ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from autoscale_compare import BASELINES, MAX_REPLICAS, TRACES_DIR, goal, selected_runs

from batchline_tools.autoscale_sim.baselines import POLICIES, simulate_policy
from batchline_tools.autoscale_sim.simulator import PROFILES, SimConfig
from batchline_tools.autoscale_sim.trace import Trace, load_trace

JITTER_S = 1e-3


def jittered(trace: Trace, seed: int) -> Trace:
    """`trace` with each arrival moved by a uniform draw in [-1, +1] ms (seed 0: unchanged)."""
    if seed == 0:
        return trace
    rng = np.random.default_rng(seed)
    arrival = np.maximum(0.0, trace.arrival_s + rng.uniform(-JITTER_S, JITTER_S, len(trace.arrival_s)))
    order = np.argsort(arrival, kind="stable")
    return Trace(trace.name, arrival[order], trace.context_tokens[order], trace.generated_tokens[order])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace-dir", type=Path, default=TRACES_DIR, help="folder of the two Azure CSVs")
    parser.add_argument("--seeds", type=int, default=4, help="jittered copies besides the trace itself")
    parser.add_argument("--case", action="append", help="run only these cases (repeatable)")
    parser.add_argument("--target", action="append", help="run only these targets, by label (repeatable)")
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args()
    config = SimConfig(profile=PROFILES["h100-8b"])
    sources = {name: load_trace(args.trace_dir / f"AzureLLMInferenceTrace_{name}.csv") for name in ("code", "conv")}
    started = time.monotonic()
    copies = args.seeds + 1
    print(f"h100-8b, replicas 1..{MAX_REPLICAS}; the trace and {args.seeds} copies with arrivals moved by <= 1 ms\n")
    print("| case | role | SLO | " + " | ".join(f"{p}: attainment, replica-h" for p in POLICIES) + " | goal met in |")
    print("|---|---|---|" + "---|" * (len(POLICIES) + 1))
    rows, kept = [], {b: Counter[str]() for b in BASELINES}
    copies_met: dict[str, Counter[str]] = {"tune": Counter(), "validate": Counter()}  # per role: pair-copies
    copies_in_range: dict[str, Counter[str]] = {"tune": Counter(), "validate": Counter()}
    spread: dict[str, list[tuple[float, float, float, float]]] = {p: [] for p in POLICIES}
    for run in selected_runs(sources, config, args.case, args.target):
        case, label = run.case, run.label
        runs = [
            {p: simulate_policy(jittered(run.trace, seed), p, run.spec, config, **run.knobs) for p in POLICIES}
            for seed in range(copies)
        ]
        cells = []
        for p in POLICIES:
            att = [100 * r[p].slo_attainment for r in runs]
            hours = [r[p].replica_hours for r in runs]
            cells.append(f"{min(att):.1f} to {max(att):.1f}%, {min(hours):.1f} to {max(hours):.1f} h")
            if case.role == "validate":
                mean_h = float(np.mean(hours))
                spread[p].append((float(np.mean(att)), mean_h, max(att) - min(att), (max(hours) - min(hours)) / mean_h))
            rows += [{"case": case.name, "slo": label, "seed": s, **r[p].metrics()} for s, r in enumerate(runs)]
        met_in = []
        for b in BASELINES:
            verdicts = [goal(r["batchline"], r[b]) for r in runs]
            met = verdicts.count("met")
            in_range = copies - verdicts.count("-")
            met_in.append(f"{b} {met}/{in_range}" if in_range else f"{b} out of range")
            copies_met[case.role][b] += met
            copies_in_range[case.role][b] += in_range
            if case.role == "validate" and in_range:
                kept[b]["every" if met == in_range else "none" if met == 0 else "some"] += 1
        print(f"| {case.name} | {case.role} | {label} | {' | '.join(cells)} | {', '.join(met_in)} |", flush=True)
    print("\nvalidation rows, means over the copies:")
    print(
        "| policy | replica-h, all rows | mean attainment | mean spread of attainment | mean spread of replica-h "
        "| rows spreading 2 points or more |"
    )
    print("|---|---|---|---|---|---|")
    for p, values in spread.items():
        if values:
            mean_att, mean_hours, att_spread, hour_spread = (np.array(v) for v in zip(*values, strict=True))
            print(
                f"| {p} | {mean_hours.sum():.1f} | {mean_att.mean():.1f}% | {att_spread.mean():.1f} points "
                f"| {100 * hour_spread.mean():.0f}% | {int((att_spread >= 2).sum())} |"
            )
    print("\nvalidation pairs in range, by how many copies meet the goal:")
    for b, counts in kept.items():
        print(f"  vs {b}: every {counts['every']}, some {counts['some']}, none {counts['none']}")
    print("\ncase x SLO x baseline x copy meeting the goal, of those in range (the tuning trace's total chooses):")
    for role, met_by in copies_met.items():
        if copies_in_range[role]:
            per_baseline = ", ".join(f"{b} {met_by[b]}/{copies_in_range[role][b]}" for b in BASELINES)
            print(f"  {role}: {per_baseline} ({sum(met_by.values())} of {sum(copies_in_range[role].values())})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
