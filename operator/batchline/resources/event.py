"""Kubernetes Events about an LLMDeployment, posted by the operator itself.

kopf's own posting is turned off: it turns every handler log line into an Event, which would be
a write on every resync. Batchline posts only condition transitions (see status.transition_events).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchline import api


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def event_body(llmd: Mapping[str, Any], event: Event, stamp: str) -> dict[str, Any]:
    meta = llmd["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message.replace("\n", " ")[:1024],
        "source": {"component": api.FIELD_MANAGER},
        "reportingComponent": api.FIELD_MANAGER,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }

