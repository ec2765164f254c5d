"""API audit logging of write calls, and counting them per user from the apiserver's audit log.

The policy logs every write verb at Metadata level and nothing else, so the log answers
"which identity made which write calls" against the real apiserver. The apiserver runs with
--audit-log-mode=blocking, so a request's event is on disk right after its response; it is
written just after the response is sent, so poll briefly when counting writes just made.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
AUDIT_LOG = "audit.log"

POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: {json.dumps(list(WRITE_VERBS))}
  - level: None
"""


def apiserver_flags(state: Path) -> list[str]:
    """Write the policy into the state dir and return the kube-apiserver flags that use it."""
    policy = state / "audit-policy.yaml"
    policy.write_text(POLICY)
    return [f"--audit-policy-file={policy}", f"--audit-log-path={state / AUDIT_LOG}",
            "--audit-log-format=json", "--audit-log-mode=blocking"]


def write_events(state: str | os.PathLike[str], user: str | None = None, since: float | None = None,
                 resource: str | None = None) -> list[dict[str, Any]]:
    """Audit events of write calls in the cluster whose state dir is `state`.

    `user` is the authenticated username (e.g. "batchline-operator"); `since` a time.time()
    value compared with the request's receive time; `resource` a plural resource name
    ("pods", which includes its subresources) or "resource/subresource" ("pods/status").
    """
    log = Path(state) / AUDIT_LOG
    if not log.exists():
        return []
    events = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # a line still being written
            continue
        if event.get("verb") in WRITE_VERBS and _matches(event, user, since, resource):
            events.append(event)
    return events


def count_writes(state: str | os.PathLike[str], user: str, since: float | None = None,
                 resource: str | None = None) -> int:
    """How many write calls `user` made; see write_events for the filters."""
    return len(write_events(state, user, since, resource))


def _matches(event: dict[str, Any], user: str | None, since: float | None, resource: str | None) -> bool:
    if user is not None and event.get("user", {}).get("username") != user:
        return False
    if since is not None and datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp() < since:
        return False
    if resource is not None:
        ref = event.get("objectRef", {})
        name = ref.get("resource", "")
        if "/" in resource:
            name = f"{name}/{ref.get('subresource', '')}"
        return bool(name == resource)
    return True
