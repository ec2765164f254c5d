"""The key that names a model repository in the cache, from the spec fields that shape it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def repository_inputs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec subset that changes the built repository; anything else must not cause a rebuild."""
    serving = spec["serving"]
    return {
        "model": {"source": spec["model"]["source"], "task": spec["model"]["task"]},
        # The quality gate is a build input: loosening it after a failed build must build again now.
        "quantization": dict(spec["quantization"]),
        "backend": serving["backend"],
        "modelName": serving["modelName"],
        "maxBatchSize": serving["maxBatchSize"],
        "dynamicBatching": serving["dynamicBatching"],
        "instancesPerReplica": serving["instancesPerReplica"],
        "responseCache": serving["responseCache"],
        "device": "gpu" if spec["resources"]["gpu"]["count"] > 0 else "cpu",
    }


def repository_key(spec: Mapping[str, Any]) -> str:
    blob = json.dumps(repository_inputs(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
