"""The in-flight engine's gRPC inputs, for the tests that drive a real tritonserver."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

SETTING_TYPES = {
    "max_tokens": ("INT32", np.int32),
    "temperature": ("FP32", np.float32),
    "top_p": ("FP32", np.float32),
    "seed": ("INT64", np.int64),
    "stream": ("BOOL", np.bool_),
}


def grpc_inputs(prompt: str | None = None, messages: list[dict] | None = None, **settings: Any) -> list:
    tensors = []

    def add(name: str, datatype: str, value: np.ndarray) -> None:
        tensor = grpcclient.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)

    if prompt is not None:
        add("text_input", "BYTES", np.array([prompt.encode()], dtype=np.object_))
    if messages is not None:
        add("messages", "BYTES", np.array([json.dumps(messages).encode()], dtype=np.object_))
    for name, value in settings.items():
        if name == "stop":
            add("stop", "BYTES", np.array([item.encode() for item in value], dtype=np.object_))
        else:
            datatype, dtype = SETTING_TYPES[name]
            add(name, datatype, np.array([value], dtype=dtype))
    return tensors
