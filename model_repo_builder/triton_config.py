"""Triton `config.pbtxt` as data, and a pure function that renders it.

Field names follow Triton's model_config.proto (ModelConfig, ModelDynamicBatching, ModelQueuePolicy,
ModelInstanceGroup, ModelWarmup, ModelResponseCache, ModelVersionPolicy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from .checkpoint import ModelKind
from .options import BatchingOptions, BuildOptions, Engine

WARMUP_FOLDER = "warmup"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class WarmupInput:
    data_type: str
    dims: tuple[int, ...]
    # A file under the model's warmup/ folder (STRING elements: 4-byte little-endian length + bytes).
    input_data_file: str


@dataclass(frozen=True)
class Warmup:
    name: str
    inputs: Mapping[str, WarmupInput]
    batch_size: int = 1
    count: int = 1


@dataclass(frozen=True)
class ModelConfig:
    name: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    batching: BatchingOptions | None = None
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    warmup: tuple[Warmup, ...] = ()
    response_cache: bool = False
    num_versions: int = 1
    decoupled: bool = False
    parameters: Mapping[str, str] = field(default_factory=dict)


def render_config(config: ModelConfig) -> str:
    """The config.pbtxt text for `config`; the same config always gives the same text."""
    lines = [
        f"name: {_quote(config.name)}",
        f"backend: {_quote(config.backend)}",
        f"max_batch_size: {config.max_batch_size}",
    ]
    if config.inputs:
        lines.append(_tensor_list("input", config.inputs))
    if config.outputs:
        lines.append(_tensor_list("output", config.outputs))
    if config.batching and config.batching.dynamic_batching:
        lines.append(_dynamic_batching(config.batching))
    lines.append(f"instance_group [ {{ count: {config.instance_count} kind: {config.instance_kind} }} ]")
    lines.append(f"version_policy: {{ latest: {{ num_versions: {config.num_versions} }} }}")
    if config.decoupled:
        lines.append("model_transaction_policy { decoupled: true }")
    lines.append(f"response_cache {{ enable: {_bool(config.response_cache)} }}")
    if config.warmup:
        lines.append("model_warmup [\n" + ",\n".join(_warmup(item) for item in config.warmup) + "\n]")
    for key, value in sorted(config.parameters.items()):
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return json.dumps(text)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(dim) for dim in dims) + " ]"


def _tensor_list(kind: str, tensors: tuple[TensorSpec, ...]) -> str:
    items = []
    for tensor in tensors:
        optional = " optional: true" if tensor.optional else ""
        items.append(
            f"  {{ name: {_quote(tensor.name)} data_type: {tensor.data_type} dims: {_dims(tensor.dims)}{optional} }}"
        )
    return f"{kind} [\n" + ",\n".join(items) + "\n]"


def _dynamic_batching(batching: BatchingOptions) -> str:
    lines = ["dynamic_batching {"]
    if batching.preferred_batch_sizes:
        sizes = ", ".join(str(size) for size in batching.preferred_batch_sizes)
        lines.append(f"  preferred_batch_size: [ {sizes} ]")
    lines += [
        f"  max_queue_delay_microseconds: {batching.max_queue_delay_microseconds}",
        "  default_queue_policy {",
        f"    max_queue_size: {batching.max_queue_size}",
        f"    default_timeout_microseconds: {batching.default_timeout_microseconds}",
        f"    allow_timeout_override: {_bool(batching.allow_timeout_override)}",
        "    timeout_action: REJECT",
        "  }",
        "}",
    ]
    return "\n".join(lines)


def _warmup(warmup: Warmup) -> str:
    inputs = " ".join(
        f"inputs {{ key: {_quote(name)} value: {{ data_type: {item.data_type} dims: {_dims(item.dims)} "
        f"input_data_file: {_quote(item.input_data_file)} }} }}"
        for name, item in sorted(warmup.inputs.items())
    )
    return f"  {{ name: {_quote(warmup.name)} batch_size: {warmup.batch_size} count: {warmup.count} {inputs} }}"


GENERATION_INPUTS = (
    TensorSpec("text_input", "TYPE_STRING", (1,)),
    TensorSpec("max_tokens", "TYPE_INT32", (1,), optional=True),
    TensorSpec("temperature", "TYPE_FP32", (1,), optional=True),
    TensorSpec("top_p", "TYPE_FP32", (1,), optional=True),
    TensorSpec("stop", "TYPE_STRING", (-1,), optional=True),
)
GENERATION_OUTPUTS = (TensorSpec("text_output", "TYPE_STRING", (1,)),)
EMBEDDING_INPUTS = (TensorSpec("text_input", "TYPE_STRING", (1,)),)
# The in-flight engine's streaming contract (docs/builder.md, "The streaming contract"): a prompt or an
# OpenAI-style chat list, per-request settings, and per response the new text; the final response
# carries why it ended and the token counts.
INFLIGHT_INPUTS = (
    TensorSpec("text_input", "TYPE_STRING", (1,), optional=True),
    TensorSpec("messages", "TYPE_STRING", (1,), optional=True),
    TensorSpec("stream", "TYPE_BOOL", (1,), optional=True),
    TensorSpec("max_tokens", "TYPE_INT32", (1,), optional=True),
    TensorSpec("temperature", "TYPE_FP32", (1,), optional=True),
    TensorSpec("top_p", "TYPE_FP32", (1,), optional=True),
    TensorSpec("seed", "TYPE_INT64", (1,), optional=True),
    TensorSpec("stop", "TYPE_STRING", (-1,), optional=True),
)
INFLIGHT_OUTPUTS = (
    TensorSpec("text_output", "TYPE_STRING", (1,)),
    TensorSpec("finish_reason", "TYPE_STRING", (1,)),
    TensorSpec("prompt_tokens", "TYPE_INT32", (1,)),
    TensorSpec("completion_tokens", "TYPE_INT32", (1,)),
    TensorSpec("error", "TYPE_STRING", (1,)),
)


def warmup_files(kind: ModelKind) -> dict[str, bytes]:
    """Contents of the warmup/ files the python model's warmup reads: a short prompt, one new token."""
    files = {"text_input": _string_element(b"Hello")}
    if kind is ModelKind.CAUSAL_LM:
        files["max_tokens"] = (1).to_bytes(4, "little", signed=True)
    return files


def _string_element(value: bytes) -> bytes:
    return len(value).to_bytes(4, "little") + value


def uses_inflight_engine(kind: ModelKind, options: BuildOptions) -> bool:
    return kind is ModelKind.CAUSAL_LM and options.engine is Engine.INFLIGHT


def inflight_model_config(options: BuildOptions) -> ModelConfig:
    """The decoupled python-backend config of the in-flight engine.

    max_batch_size 0: Triton hands each request over as it comes, and the engine batches them (per
    decode step). There is no Triton warmup (the model warms its engine up at load) and no response
    cache (Triton has none for decoupled models).
    """
    parameters = {
        "weights": "weights",
        "engine": str(Engine.INFLIGHT),
        "torch_threads": str(options.torch_threads),
        "default_max_tokens": str(options.default_max_tokens),
        "kv_cache_tokens": str(options.kv_cache_tokens),
        "max_batch_tokens": str(options.max_batch_tokens),
        "max_running_requests": str(options.batching.max_batch_size),
        "warmup": "true" if options.warmup else "false",
    }
    return ModelConfig(
        name=options.model_name,
        backend="python",
        max_batch_size=0,
        inputs=INFLIGHT_INPUTS,
        outputs=INFLIGHT_OUTPUTS,
        instance_kind=str(options.instance_kind),
        instance_count=options.instance_count,
        num_versions=options.num_versions,
        decoupled=True,
        parameters=parameters,
    )


def python_model_config(kind: ModelKind, options: BuildOptions, embedding_size: int) -> ModelConfig:
    """The python-backend config for a text-generation or an embedding model."""
    if uses_inflight_engine(kind, options):
        return inflight_model_config(options)
    inputs: tuple[TensorSpec, ...] = GENERATION_INPUTS
    outputs: tuple[TensorSpec, ...] = GENERATION_OUTPUTS
    if kind is ModelKind.EMBEDDING:
        inputs = EMBEDDING_INPUTS
        outputs = (TensorSpec("embedding", "TYPE_FP32", (embedding_size,)),)
    parameters = {"weights": "weights", "torch_threads": str(options.torch_threads)}
    if kind is ModelKind.CAUSAL_LM:
        parameters["default_max_tokens"] = str(options.default_max_tokens)
    warmup: tuple[Warmup, ...] = ()
    if options.warmup:
        by_name = {tensor.name: tensor for tensor in inputs}
        warmup_inputs = {name: WarmupInput(by_name[name].data_type, (1,), name) for name in warmup_files(kind)}
        warmup = (Warmup("warmup", warmup_inputs),)
    return ModelConfig(
        name=options.model_name,
        backend="python",
        max_batch_size=options.batching.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        batching=options.batching,
        instance_kind=str(options.instance_kind),
        instance_count=options.instance_count,
        warmup=warmup,
        response_cache=options.response_cache,
        num_versions=options.num_versions,
        parameters=parameters,
    )
