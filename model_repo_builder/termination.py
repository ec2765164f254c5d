"""What a builder container leaves in its Kubernetes termination message (at most 4096 bytes).

On success a compact JSON summary of the build report, which the operator copies into the
LLMDeployment's status; on failure the error itself, which the operator shows as the reason the
build failed. Outside Kubernetes there is no termination log and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LIMIT = 4096


def write(path: str | None, text: str) -> None:
    if not path:
        return
    data = text.encode()
    if len(data) > LIMIT:
        data = data[: LIMIT - 3] + b"..."
    Path(path).write_bytes(data)


def build_summary(report: dict[str, Any], alias: str | None, reused: bool) -> str:
    quality = report["quality"]
    size = report["size"]
    summary = {
        "key": report["key"],
        "alias": alias,
        "reused": reused,
        "mode": report["options"]["mode"],
        "sizeBytes": size["quantized_weights_bytes"],
        "fp32Bytes": size["fp32_weights_bytes"],
        "compressionRatio": round(size["compression_ratio_vs_fp32"], 3),
        "buildSeconds": round(report["build_seconds"], 1),
        "quality": {
            k: round(quality[src], 5)
            for k, src in (
                ("perplexityIncrease", "perplexity_increase"),
                ("top1Agreement", "top1_agreement"),
                ("maxLogitError", "max_logit_error"),
                ("minCosineSimilarity", "min_cosine_similarity"),
            )
            if isinstance(quality.get(src), int | float)
        }
        | {"passed": bool(quality["passed"])},
    }
    return json.dumps(summary, separators=(",", ":"))
