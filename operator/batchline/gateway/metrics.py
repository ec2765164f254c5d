"""The gateway's Prometheus metrics, on a registry of its own (served at /metrics).

`model` is the model id for known models and "" for requests naming no known model, so a client
cannot grow the label set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from batchline.gateway.routing import Model

PREFIX = "batchline_gateway"
# Dense enough up to a minute that a p95 read from buckets (histogram_quantile) stays near the truth.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0
)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                              "Time from a streamed request's arrival to its first token, held time included.",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram(f"{PREFIX}_time_per_output_token_seconds",
                              "Mean time between a streamed answer's tokens after the first, one sample per request.",
                              ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds",
                                 "Time from a request's arrival to its last byte, held time included.",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter(f"{PREFIX}_requests", "Requests answered, by HTTP status code.",
                                ["model", "endpoint", "code"], registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens, as the model counted them.",
                                     ["model"], registry=r)
        self.completion_tokens = Counter(f"{PREFIX}_completion_tokens",
                                         "Completion tokens, as the model counted them.", ["model"], registry=r)
        # The two demand gauges also name the LLMDeployment in labels of their own, so the operator can
        # match them to its objects without parsing `model` (and without clashing with the `namespace`
        # target label a PodMonitor gives the gateway's series).
        demand = ["model", "llmdeployment_namespace", "llmdeployment"]
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "Requests sent to a replica and not yet answered.",
                               demand, registry=r)
        self.waiting = Gauge(f"{PREFIX}_requests_waiting",
                             "Requests held for a ready replica with room (the demand of a model scaled to zero).",
                             demand, registry=r)
        self.retries = Counter(f"{PREFIX}_upstream_retries",
                               "Requests moved to another replica after a connection failure, before any token.",
                               ["model"], registry=r)
        self.cancelled = Counter(f"{PREFIX}_upstream_cancellations",
                                 "Generations cancelled upstream because the client went away or stopped reading.",
                                 ["model"], registry=r)


def demand_labels(model: Model) -> tuple[str, str, str]:
    """Label values of the demand gauges for `model`."""
    return model.id, model.namespace, model.name or model.id
