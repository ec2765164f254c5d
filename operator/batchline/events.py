"""Kubernetes Events about an LLMDeployment, posted by the operator itself.

kopf's own posting is turned off: it turns every handler log line into an Event, which would be
a write on every resync. Batchline posts only condition transitions (see status.transition_events).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

from batchline import api
from batchline.status import Event


def event_body(llmd: Mapping[str, Any], event: Event, now: datetime.datetime) -> dict[str, Any]:
    meta = llmd["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
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


class EventPoster:
    def __init__(self, create: Callable[[dict[str, Any]], None]) -> None:
        self._create = create  # e.g. Applier.create

    def __call__(self, llmd: Mapping[str, Any], event: Event) -> None:
        self._create(event_body(llmd, event, datetime.datetime.now(datetime.UTC)))
