"""`spec.autoscaling` of an LLMDeployment, parsed and validated, with defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ALLOWED_QUANTILES = (0.5, 0.9, 0.95, 0.99)
DEFAULT_TARGET_LATENCY_MS = 2000
# The SLO fields: any subset may be set; with none set, targetLatencyMs takes its default.
TARGET_FIELDS = ("target_latency_ms", "target_time_to_first_token_ms", "target_time_per_output_token_ms")


@dataclass(frozen=True)
class AutoscalingSpec:
    """Autoscaling settings; attribute names are the snake_case of the CRD's camelCase fields."""

    min_replicas: int = 1
    max_replicas: int = 4
    target_latency_ms: int | None = None  # end to end, at latency_quantile
    target_time_to_first_token_ms: int | None = None  # TTFT, at latency_quantile
    target_time_per_output_token_ms: int | None = None  # TPOT, at latency_quantile
    latency_quantile: float = 0.95
    scale_up_stabilization_seconds: int = 0
    scale_down_stabilization_seconds: int = 300
    max_scale_up_step: int = 4
    max_scale_down_step: int = 1
    cold_start_seconds: int = 60
    tolerance: float = 0.1
    enabled: bool = True
    demand_window_seconds: int = 300
    metrics_staleness_seconds: int = 60

    def __post_init__(self) -> None:
        if all(getattr(self, name) is None for name in TARGET_FIELDS):
            object.__setattr__(self, "target_latency_ms", DEFAULT_TARGET_LATENCY_MS)
        problems = [
            msg
            for ok, msg in (
                (self.min_replicas >= 0, "minReplicas must be >= 0"),
                (self.max_replicas >= max(1, self.min_replicas), "maxReplicas must be >= max(1, minReplicas)"),
                *(
                    (getattr(self, name) is None or getattr(self, name) > 0, f"{_camel(name)} must be > 0")
                    for name in TARGET_FIELDS
                ),
                (self.latency_quantile in ALLOWED_QUANTILES, f"latencyQuantile must be one of {ALLOWED_QUANTILES}"),
                (0 <= self.scale_up_stabilization_seconds <= 3600, "scaleUpStabilizationSeconds must be 0..3600"),
                (
                    0 <= self.scale_down_stabilization_seconds <= 3600,
                    "scaleDownStabilizationSeconds must be 0..3600",
                ),
                (self.max_scale_up_step >= 1, "maxScaleUpStep must be >= 1"),
                (self.max_scale_down_step >= 1, "maxScaleDownStep must be >= 1"),
                (self.cold_start_seconds >= 0, "coldStartSeconds must be >= 0"),
                (0 <= self.tolerance < 1, "tolerance must be in [0, 1)"),
                (15 <= self.demand_window_seconds <= 3600, "demandWindowSeconds must be 15..3600"),
                (self.metrics_staleness_seconds > 0, "metricsStalenessSeconds must be > 0"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("invalid spec.autoscaling: " + "; ".join(problems))

    def targets_ms(self) -> dict[str, int]:
        """The SLOs in use: "latency", "ttft", "tpot" -> milliseconds (at latency_quantile)."""
        values = {
            "latency": self.target_latency_ms,
            "ttft": self.target_time_to_first_token_ms,
            "tpot": self.target_time_per_output_token_ms,
        }
        return {k: v for k, v in values.items() if v is not None}

    @classmethod
    def from_crd(cls, d: Mapping[str, Any] | None) -> AutoscalingSpec:
        """Build from the CRD dict; unknown keys are rejected so typos do not pass silently."""
        d = dict(d or {})
        by_crd_name = {_camel(f.name): f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(by_crd_name))
        if unknown:
            raise ValueError(f"unknown spec.autoscaling fields: {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            field = by_crd_name[key]
            kind = int if field.name in TARGET_FIELDS else type(getattr(cls, field.name))
            kwargs[field.name] = _coerce(key, value, kind)
        if kwargs.get("target_latency_ms") == 0:  # 0 turns the end-to-end target off
            kwargs["target_latency_ms"] = None
            if all(kwargs.get(name) is None for name in TARGET_FIELDS):
                raise ValueError(
                    "invalid spec.autoscaling: set at least one of targetLatencyMs (above 0), "
                    "targetTimeToFirstTokenMs and targetTimePerOutputTokenMs"
                )
        elif "targetLatencyMs" not in d:  # as the API server defaults it
            kwargs["target_latency_ms"] = DEFAULT_TARGET_LATENCY_MS
        return cls(**kwargs)

    def to_crd(self) -> dict[str, Any]:
        fields = dataclasses.fields(self)
        return {_camel(f.name): getattr(self, f.name) for f in fields if getattr(self, f.name) is not None}


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def _coerce(key: str, value: Any, kind: type) -> Any:
    # bool is an int subclass: reject it explicitly for numeric fields, and numbers for bool fields.
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a boolean, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if kind is int:
        if value != int(value):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(value)
    return float(value)
