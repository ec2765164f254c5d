"""The serving engines' inputs as tritonclient tensors, for the tests and benchmarks that drive a real
tritonserver directly (the gateway builds its own from each model's config: `batchline.gateway.triton`).

The static engine batches, so its tensors carry a batch dimension (`batched=True`); the in-flight engine
takes one request per call and has none.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import numpy as np

SETTING_TYPES: dict[str, tuple[str, type]] = {
    "max_tokens": ("INT32", np.int32),
    "temperature": ("FP32", np.float32),
    "top_p": ("FP32", np.float32),
    "seed": ("INT64", np.int64),
    "stream": ("BOOL", np.bool_),
}


def triton_inputs(
    client: ModuleType,
    prompt: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    batched: bool = False,
    **settings: Any,
) -> list[Any]:
    """`client` is `tritonclient.grpc` or `tritonclient.http`; settings left as None are not sent."""
    tensors = []

    def add(name: str, datatype: str, values: list[Any], dtype: type) -> None:
        value: np.ndarray = np.array([values] if batched else values, dtype=dtype)
        tensor = client.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)

    if prompt is not None:
        add("text_input", "BYTES", [prompt.encode()], np.object_)
    if messages is not None:
        add("messages", "BYTES", [json.dumps(messages).encode()], np.object_)
    for name, value in settings.items():
        if value is None:
            continue
        if name == "stop":
            add("stop", "BYTES", [item.encode() for item in value], np.object_)
        else:
            datatype, dtype = SETTING_TYPES[name]
            add(name, datatype, [value], dtype)
    return tensors
