"""The vocabulary of an LLMDeployment's status: condition types and every reason the operator sets.

One place for them (as kubebuilder keeps conditions.go), so status, build state, feasibility checks,
Events and the Argo CD health check (charts/batchline/argocd/.../health.lua, tested against this
module) cannot drift apart.
"""

from __future__ import annotations

from enum import StrEnum

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


class Type(StrEnum):
    READY = "Ready"  # summarises the others
    MODEL_READY = "ModelReady"  # the build of the spec's model is in the cache
    SCHEDULABLE = "Schedulable"  # the GPUs asked for exist and are free
    PROGRESSING = "Progressing"  # a build or a rollout is under way
    DEGRADED = "Degraded"  # something needs the user's attention
    SCALING_ACTIVE = "ScalingActive"  # the autoscaler has metrics to act on


ORDER = (Type.READY, Type.MODEL_READY, Type.SCHEDULABLE, Type.PROGRESSING, Type.DEGRADED, Type.SCALING_ACTIVE)


class Reason(StrEnum):
    # the build (ModelReady, and Ready/Progressing/Degraded while no model serves)
    CACHED = "Cached"
    BUILD_PENDING = "BuildPending"
    BUILDING = "Building"
    BUILT = "Built"
    BUILD_FAILED = "BuildFailed"
    BUILD_BLOCKED = "BuildBlocked"  # its pod cannot start: no node fits, a missing volume, image or Secret
    BUILD_OUT_OF_MEMORY = "BuildOutOfMemory"
    # what the spec asks of the cluster (report.feasibility)
    INVALID_MODEL_SOURCE = "InvalidModelSource"
    UNSUPPORTED_MODEL_SOURCE = "UnsupportedModelSource"
    GPU_PRODUCT_NOT_FOUND = "GPUProductNotFound"
    NO_MATCHING_GPU_NODES = "NoMatchingGPUNodes"
    INSUFFICIENT_GPUS = "InsufficientGPUs"
    UNSCHEDULABLE = "Unschedulable"
    SCHEDULABLE = "Schedulable"
    # serving
    NOT_DEPLOYED = "NotDeployed"
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    SERVING = "Serving"
    SCALED_TO_ZERO = "ScaledToZero"
    REPLICAS_STARTING = "ReplicasStarting"
    AS_EXPECTED = "AsExpected"
    # the autoscaler (ScalingActive)
    AUTOSCALING_DISABLED = "AutoscalingDisabled"
    WAITING_FOR_METRICS = "WaitingForMetrics"
    TRACKING_LATENCY = "TrackingLatency"
    PROMETHEUS_UNAVAILABLE = "PrometheusUnavailable"
    NO_METRICS = "NoMetrics"
    METRICS_NAN = "MetricsNaN"
    METRICS_STALE = "MetricsStale"


class EventReason(StrEnum):
    """Reasons of Events that are not a condition's transition."""

    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
