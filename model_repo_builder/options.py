"""Build options: quantization mode, backend, batching and quality thresholds.

Every field here takes part in the build key, so two builds with the same options and checkpoint
produce the same repository.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Mode(StrEnum):
    # none keeps the checkpoint's float dtype where it is served on GPUs and serves float32 on CPU
    # (CPU half-precision matmuls are slow); fp32 is float32 everywhere. See BuildOptions.float_mode.
    NONE = "none"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8_WEIGHT_ONLY = "int8-weight-only"
    INT8_DYNAMIC = "int8-dynamic"
    INT4_WEIGHT_ONLY = "int4-weight-only"
    FP8 = "fp8"


# Modes stored in the builder's packed integer layout (see quantize.py); they can be de-quantized at load.
PACKED_MODES = (Mode.INT8_WEIGHT_ONLY, Mode.INT4_WEIGHT_ONLY)


class Backend(StrEnum):
    PYTHON = "python"
    VLLM = "vllm"


class Engine(StrEnum):
    """How the python backend runs text generation.

    INFLIGHT: a decoupled model around transformers' continuous batching (requests join and leave the
    running batch at every decode step; token streaming). STATIC: one generate() call per Triton
    dynamic batch (a batch waits for its longest request; no streaming; serves HTTP /infer).
    """

    INFLIGHT = "inflight"
    STATIC = "static"


class InstanceKind(StrEnum):
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"


@dataclass(frozen=True)
class BatchingOptions:
    """Triton's dynamic batcher. `max_batch_size` 1 with `dynamic_batching` False serves one at a time."""

    max_batch_size: int = 8
    dynamic_batching: bool = True
    max_queue_delay_microseconds: int = 5000
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0
    default_timeout_microseconds: int = 0
    allow_timeout_override: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if any(size < 1 or size > self.max_batch_size for size in self.preferred_batch_sizes):
            raise ValueError("preferred batch sizes must lie between 1 and max_batch_size")


@dataclass(frozen=True)
class QualityThresholds:
    """Largest quality drop a build may show; a build past any of them fails.

    `max_perplexity_increase` is relative (0.02 = perplexity may rise by 2%).
    """

    max_perplexity_increase: float
    min_top1_agreement: float
    min_cosine_similarity: float
    max_logit_error: float | None = None


# Defaults are loose enough for tiny random models and tight enough to catch a broken quantizer.
DEFAULT_THRESHOLDS: dict[Mode, QualityThresholds] = {
    Mode.NONE: QualityThresholds(0.001, 0.999, 0.9999),
    Mode.FP32: QualityThresholds(0.001, 0.999, 0.9999),
    Mode.FP16: QualityThresholds(0.01, 0.97, 0.999),
    Mode.BF16: QualityThresholds(0.02, 0.93, 0.995),
    Mode.INT8_WEIGHT_ONLY: QualityThresholds(0.02, 0.93, 0.99),
    Mode.INT8_DYNAMIC: QualityThresholds(0.06, 0.85, 0.98),
    Mode.INT4_WEIGHT_ONLY: QualityThresholds(0.10, 0.80, 0.95),
    Mode.FP8: QualityThresholds(0.03, 0.90, 0.99),
}


@dataclass(frozen=True)
class BuildOptions:
    mode: Mode = Mode.NONE
    backend: Backend = Backend.PYTHON
    model_name: str = "model"
    group_size: int = 32
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    instance_kind: InstanceKind = InstanceKind.CPU
    instance_count: int = 1
    default_max_tokens: int = 64
    torch_threads: int = 0
    response_cache: bool = False
    warmup: bool = True
    num_versions: int = 1
    quality: QualityThresholds | None = None
    # Where the serving container mounts the repository: vLLM's model.json needs an absolute path.
    vllm_model_root: str = "/models"
    # Fraction of each body Linear row's weights (all Linear layers but the LM head) set to zero, the
    # smallest magnitudes first, before quantization. The repository stays dense (see docs/builder.md).
    sparsity: float = 0.0
    # vllm backend: GPUs one engine splits the model over (vLLM's tensor_parallel_size).
    tensor_parallel_size: int = 1
    # Text generation on the python backend: the in-flight batching engine or one generate() per batch.
    engine: Engine = Engine.INFLIGHT
    # In-flight engine: KV cache size per model instance in tokens (all requests together; allocated at
    # load, never sized from the host's memory), and the most tokens one engine step processes.
    kv_cache_tokens: int = 8192
    max_batch_tokens: int = 512

    def __post_init__(self) -> None:
        if not self.model_name or not all(c.isalnum() or c in "-_." for c in self.model_name):
            raise ValueError(f"model name {self.model_name!r} must be letters, digits, '-', '_' or '.'")
        if self.group_size not in (32, 64, 128, 256):
            raise ValueError("group_size must be 32, 64, 128 or 256")
        if self.instance_count < 1:
            raise ValueError("instance_count must be at least 1")
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be at least 1")
        if self.tensor_parallel_size > 1 and self.backend is not Backend.VLLM:
            raise ValueError(
                "tensor_parallel_size > 1 needs the vllm backend; the python backend loads a full copy on each GPU"
            )
        if not (isinstance(self.sparsity, int | float) and 0.0 <= self.sparsity < 1.0):
            raise ValueError(
                f"sparsity must be a number in [0, 1) (the fraction of weights to zero), got {self.sparsity!r}"
            )
        if self.kv_cache_tokens < 256:
            raise ValueError(f"kv_cache_tokens must be at least 256, got {self.kv_cache_tokens}")
        if self.max_batch_tokens < 16:
            raise ValueError(f"max_batch_tokens must be at least 16, got {self.max_batch_tokens}")
        object.__setattr__(self, "engine", Engine(self.engine))
        # 0 and 0.0 are the same option, and must give the same build key.
        object.__setattr__(self, "sparsity", float(self.sparsity))

    def float_mode(self, checkpoint_dtype: str) -> Mode:
        """The float format of a none or fp32 build, as the float mode that stores it: fp32 -> NONE (which
        quantize.py stores as float32); none -> the checkpoint's own dtype (BF16, FP16 or NONE) where it
        is served on GPUs (the vllm backend, or KIND_GPU instances), NONE (float32) on CPU."""
        if self.mode is Mode.FP32:
            return Mode.NONE
        if self.mode is not Mode.NONE:
            return self.mode
        on_gpu = self.backend is Backend.VLLM or self.instance_kind is InstanceKind.GPU
        halves = {"bfloat16": Mode.BF16, "float16": Mode.FP16}
        return halves.get(checkpoint_dtype, Mode.NONE) if on_gpu else Mode.NONE

    @property
    def thresholds(self) -> QualityThresholds:
        return self.quality or DEFAULT_THRESHOLDS[self.mode]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (enums are str) with the effective thresholds filled in."""
        data = dataclasses.asdict(self)
        data["quality"] = dataclasses.asdict(self.thresholds)
        return data
