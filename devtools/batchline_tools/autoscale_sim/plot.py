"""PNG of load, replicas and latency over time for one or more simulated policies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from batchline_tools.autoscale_sim.simulator import SimResult


def plot_results(results: Sequence[SimResult], path: str | Path, title: str = "") -> Path:
    """Three panels sharing the time axis (minutes); all results should come from one trace."""
    if not results:
        raise ValueError("nothing to plot")
    fig, (load_ax, rep_ax, lat_ax) = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    first = results[0].timeline
    targets = results[0].targets
    ttft = targets.ttft_ms is not None  # plot TTFT when it is a target, end-to-end latency otherwise
    load_ax.plot(first.t / 60, first.arrivals_per_s, color="grey", lw=0.8)
    load_ax.set_ylabel("arrivals (req/s)")
    for result in results:
        tl = result.timeline
        label = f"{result.policy} ({result.slo_attainment:.0%} in SLO, {result.replica_hours:.1f} replica-h)"
        rep_ax.step(tl.t / 60, tl.replicas, where="post", lw=1.2, label=label)
        lat_ax.plot(tl.t / 60, (tl.ttft_ms if ttft else tl.latency_ms) / 1e3, lw=0.9, label=result.policy)
    rep_ax.set_ylabel("replicas")
    rep_ax.legend(loc="upper right", fontsize=7)
    target_ms = targets.ttft_ms if ttft else targets.latency_ms
    target_s = target_ms / 1e3 if target_ms is not None else math.nan
    if math.isfinite(target_s):
        lat_ax.axhline(target_s, color="red", ls="--", lw=0.8, label="target")
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel(f"p95 {'TTFT' if ttft else 'latency'} per tick (s)")
    lat_ax.set_xlabel("minutes")
    lat_ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title or results[0].trace)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path
