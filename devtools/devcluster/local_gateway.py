"""The gateway of the local embedded default: `batchline gateway` as one of the cluster's processes.

It serves every namespace (model ids `namespace/name`, e.g. `default/smollm2`), as the chart's
gateway does by default, so an LLMDeployment applied in any namespace is reachable without
restarting it. It listens on 127.0.0.1 only, on a port recorded in the cluster state (kept across
restarts of the gateway, so `OPENAI_BASE_URL` stays valid while the cluster is up), and talks to the
API server as its own user (`batchline-gateway`), which may only read LLMDeployments and
EndpointSlices, as the chart's ClusterRole allows. API keys are off: any key will do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from devcluster.components import LOCALHOST

# How long a request may wait for a ready replica with room: a model at zero replicas must get one
# started (the autoscaler's tick, scheduling, the agent starting tritonserver, the model's load and
# its readiness probe), which takes 40-120 s for the example on a loaded 2-core machine.
HOLD_TIMEOUT_S = 300


def argv(kubeconfig: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "batchline.cli", "gateway", f"--kubeconfig={kubeconfig}", f"--host={LOCALHOST}",
            f"--port={port}", f"--hold-timeout={HOLD_TIMEOUT_S}"]


def base_url(port: int) -> str:
    """What an OpenAI client's base_url (or OPENAI_BASE_URL) is set to."""
    return f"http://{LOCALHOST}:{port}/v1"


def health_url(port: int) -> str:
    """Ready once its first model table is in (both watches listed): the CRD is there and it may read."""
    return f"http://{LOCALHOST}:{port}/readyz"
