"""Builds quantized NVIDIA Triton model repositories from Hugging Face checkpoints.

Torch and transformers are imported lazily, so `import model_repo_builder` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .content_key import compute_content_key
from .errors import (
    BuildError,
    CheckpointError,
    QualityGateError,
    UnsupportedArchitectureError,
    UnsupportedModeError,
)
from .options import Backend, BatchingOptions, BuildOptions, InstanceKind, Mode, QualityThresholds
from .triton_server import TritonServer
from .version import BUILDER_VERSION

if TYPE_CHECKING:
    from .builder import BuildResult, build

__all__ = [
    "BUILDER_VERSION",
    "Backend",
    "BatchingOptions",
    "BuildError",
    "BuildOptions",
    "BuildResult",
    "CheckpointError",
    "InstanceKind",
    "Mode",
    "QualityGateError",
    "QualityThresholds",
    "TritonServer",
    "UnsupportedArchitectureError",
    "UnsupportedModeError",
    "build",
    "compute_content_key",
]

_LAZY = {"build": "builder", "BuildResult": "builder"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
