"""Can any policy meet the autoscaling goal on a case, and how far is Batchline from what is possible?

`bench/autoscale_compare.py` judges Batchline against three baselines, each at its own point of
(replica-hours, SLO attainment). Against the dear, high-attainment HPA and the lean, low-attainment
concurrency target at once, the goal asks for one point that beats both by its margins, which the
trade-off between cost and attainment may not allow. This bench measures that trade-off with two
families of reference pools that no real autoscaler can beat at their own game:

* static: n replicas, all ready from the start (no cold start, no scaling events);
* foresight: it knows every future arrival, and at each tick asks for the replicas that the work
  arriving one cold start ahead needs at a utilisation u (work: the engine time of each request in the
  replica profile, prompt read plus decode steps at half the batch), so they are ready when it comes.

For each case and SLO it prints the attainment no pool exceeds however many replicas it has (the
requests that meet every target alone on a ready replica: `attainment_ceiling`), Batchline's point,
the best attainment any reference pool reaches at no more than Batchline's replica-hours, and
whether some reference pool meets the goal against each baseline, and against all three at once. A
goal that no reference pool meets against all three is out of reach of these families; one they
meet and Batchline does not is room for the policy.

    .venv/bin/python bench/autoscale_frontier.py --compare-json FILE [--case NAME ...] [--json OUT]

FILE is `bench/autoscale_compare.py --json` output (the policies' points, with the same code).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from autoscale_compare import BASELINES, CASES, MAX_REPLICAS, TARGETS, TRACES_DIR, in_range, meets_goal

from batchline.autoscaler.spec import AutoscalingSpec
from batchline_tools.autoscale_sim.simulator import (
    PROFILES,
    PoolView,
    ReplicaProfile,
    SimConfig,
    Targets,
    attainment_ceiling,
    simulate,
)
from batchline_tools.autoscale_sim.trace import Trace, load_trace

STATIC = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384)
UTILISATION = (0.03, 0.05, 0.07, 0.1, 0.14, 0.2, 0.28, 0.4, 0.56, 0.8, 1.0)
FORESIGHT_WINDOWS_S = (30.0, 120.0)


def engine_seconds(trace: Trace, profile: ReplicaProfile) -> np.ndarray:
    """Replica time each request takes: its prompt read, and its decode steps' share at half a batch."""
    prompt, output = trace.context_tokens.astype(float), trace.generated_tokens.astype(float)
    per_output = (
        profile.decode_ms_per_seq
        + profile.kv_ms_per_1k_tokens * (prompt + output / 2) / 1000
        + profile.step_overhead_ms / max(1.0, profile.max_num_seqs / 2)
    )
    return (profile.prefill_ms_per_token * prompt + per_output * output) / 1000


@dataclass
class Static:
    replicas: int
    name: str = "static"

    def desired(self, view: PoolView) -> int:
        return self.replicas


class Foresight:
    """Replicas for the busiest `window_s` of work that starts between now and one cold start from
    now: a replica asked for now serves from then on, and one removed now is missed from now on."""

    name = "foresight"

    def __init__(self, trace: Trace, work_s: np.ndarray, cold_start_s: float, window_s: float, u: float) -> None:
        self.arrival, self.cumulative = trace.arrival_s, np.concatenate([[0.0], np.cumsum(work_s)])
        self.lead, self.window_s, self.u = cold_start_s, window_s, u

    def at(self, t: float) -> int:
        lo, hi = np.searchsorted(self.arrival, [t, t + self.window_s])
        return max(1, math.ceil((self.cumulative[hi] - self.cumulative[lo]) / (self.window_s * self.u)))

    def desired(self, view: PoolView) -> int:
        return max(self.at(view.now + lead) for lead in np.arange(0.0, self.lead + 1.0, 15.0))


def _targets(spec: AutoscalingSpec) -> Targets:
    t = spec.targets_ms()
    return Targets(latency_ms=t.get("latency"), ttft_ms=t.get("ttft"), tpot_ms=t.get("tpot"))


def reference_points(trace: Trace, spec: AutoscalingSpec, config: SimConfig, most: int) -> list[dict[str, float]]:
    """(replica-hours, attainment) of every static pool up to `most` replicas and every foresight pool."""
    config = replace(config, cold_start_s=float(spec.cold_start_seconds), latency_quantile=spec.latency_quantile)
    targets, points = _targets(spec), []
    for n in (n for n in STATIC if n <= most):
        r = simulate(trace, Static(n), targets, replace(config, initial_replicas=n))
        points.append({"kind": f"static {n}", "hours": r.replica_hours, "attainment": r.slo_attainment})
    work = engine_seconds(trace, config.profile)
    for window in FORESIGHT_WINDOWS_S:
        for u in UTILISATION:
            policy = Foresight(trace, work, config.cold_start_s, window, u)
            r = simulate(trace, policy, targets, replace(config, initial_replicas=policy.at(0.0)))
            if r.peak_replicas > most:  # past every policy's peak by far: no goal lies there
                continue
            points.append({"kind": f"foresight {window:g}s u={u:g}", "hours": r.replica_hours,
                           "attainment": r.slo_attainment})  # fmt: skip
    return points


def meets(point: dict[str, float], base: dict[str, float]) -> bool:
    return meets_goal(point["attainment"], point["hours"], base["slo_attainment"], base["replica_hours"])


@lru_cache(maxsize=1)
def _sources(trace_dir: str) -> dict[str, Trace]:
    """The two Azure traces, read once per worker process."""
    return {name: load_trace(Path(trace_dir) / f"AzureLLMInferenceTrace_{name}.csv") for name in ("code", "conv")}


def _job(args: tuple[str, str, str, str, int]) -> tuple[str, str, list[dict[str, float]], float]:
    """A case at one SLO: its reference points, and the attainment no pool exceeds."""
    trace_dir, profile, case, label, most = args
    trace = next(c for c in CASES if c.name == case).trace(_sources(trace_dir))
    spec = AutoscalingSpec(min_replicas=1, max_replicas=MAX_REPLICAS, **dict(TARGETS)[label])
    points = reference_points(trace, spec, SimConfig(profile=PROFILES[profile]), most)
    return case, label, points, attainment_ceiling(trace, _targets(spec), PROFILES[profile])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-json", type=Path, required=True, help="bench/autoscale_compare.py --json output")
    parser.add_argument("--trace-dir", type=Path, default=TRACES_DIR)
    parser.add_argument("--profile", default="h100-8b", choices=sorted(PROFILES))
    parser.add_argument("--case", action="append", help="only these cases (repeatable)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every reference point here")
    args = parser.parse_args()
    rows: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    roles: dict[str, str] = {}
    for r in json.loads(args.compare_json.read_text()):
        if not args.case or r["case"] in args.case:
            rows.setdefault((r["case"], r["slo"]), {})[r["policy"]] = r
            roles[r["case"]] = r["role"]
    jobs = [(str(args.trace_dir), args.profile, case, label,
             2 * max(p["peak_replicas"] for p in policies.values()))
            for (case, label), policies in rows.items()]  # fmt: skip
    started = time.monotonic()
    print("| case | SLO | no pool exceeds | Batchline | best reference at no more cost "
          "| reference meets vs HPA / KEDA / concurrency | one reference meets all | Batchline meets |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    out, tally = [], {"all": 0, "rows": 0, "batchline": 0}
    with ProcessPoolExecutor(args.workers) as pool:
        for case, label, points, ceiling in pool.map(_job, jobs):
            policies = rows[(case, label)]
            ours = policies["batchline"]
            bases = [policies[b] for b in BASELINES]
            in_play = [b for b in bases if in_range(b["slo_attainment"])]
            verdicts = ["-" if not in_range(b["slo_attainment"]) else "met" if any(meets(p, b) for p in points)
                        else "**no**" for b in bases]  # fmt: skip
            one = any(all(meets(p, b) for b in in_play) for p in points) if in_play else None
            ours_all = all(meets({"hours": ours["replica_hours"], "attainment": ours["slo_attainment"]}, b)
                           for b in in_play)  # fmt: skip
            cheaper = [p for p in points if p["hours"] <= ours["replica_hours"]]
            best = max(cheaper, key=lambda p: p["attainment"]) if cheaper else None
            if in_play and roles[case] == "validate":
                tally["rows"] += 1
                tally["all"] += bool(one)
                tally["batchline"] += ours_all
            best_text = f"{best['attainment']:.1%} / {best['hours']:.1f} h ({best['kind']})" if best else "none"
            print(f"| {case} | {label} | {ceiling:.1%} | {ours['slo_attainment']:.1%} / {ours['replica_hours']:.1f} h "
                  f"| {best_text} "
                  f"| {' / '.join(verdicts)} | {'-' if one is None else 'yes' if one else '**no**'} "
                  f"| {'-' if not in_play else 'yes' if ours_all else 'no'} |", flush=True)  # fmt: skip
            out.append({"case": case, "slo": label, "ceiling": ceiling, "points": points})
    print(f"\nvalidation rows with a baseline in range: {tally['rows']}; one reference pool meets the goal against "
          f"every baseline in range on {tally['all']}; Batchline on {tally['batchline']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    print(f"({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
