"""Request traces: any CSV with TIMESTAMP, ContextTokens and GeneratedTokens columns."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class Trace:
    """Arrivals in seconds from the first request, sorted, with their token counts."""

    name: str
    arrival_s: np.ndarray
    context_tokens: np.ndarray
    generated_tokens: np.ndarray

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self.arrival_s) else 0.0


def load_trace(path: str | Path, time_scale: float = 1.0) -> Trace:
    """Read a trace; `time_scale` > 1 compresses time (2.0: same requests in half the time).

    Naive timestamps (the Azure 2023 traces) are read as UTC; "+00:00" suffixes are honoured.
    """
    if time_scale <= 0:
        raise ValueError("time_scale must be > 0")
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; need {', '.join(COLUMNS)}")
        rows = [(_seconds(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in reader]
    if not rows:
        raise ValueError(f"{path}: no requests")
    data = np.array(rows, dtype=np.float64)
    data = data[np.argsort(data[:, 0], kind="stable")]
    arrival = (data[:, 0] - data[0, 0]) / time_scale
    return Trace(
        name=path.stem,
        arrival_s=arrival,
        context_tokens=data[:, 1].astype(np.int64),
        generated_tokens=np.maximum(data[:, 2], 1).astype(np.int64),
    )


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Write `trace` as a CSV that `load_trace` reads back (timestamps in UTC from the epoch)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for t, prompt, output in zip(trace.arrival_s, trace.context_tokens, trace.generated_tokens, strict=True):
            writer.writerow((datetime.fromtimestamp(float(t), UTC).isoformat(), int(prompt), int(output)))
    return path


def _seconds(stamp: str) -> float:
    parsed = datetime.fromisoformat(stamp.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
