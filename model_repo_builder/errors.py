"""Errors a build can end with. Each names what the user must change."""

from __future__ import annotations


class BuildError(Exception):
    """Base class: a build that failed and left nothing behind."""


class CheckpointError(BuildError):
    """The checkpoint is missing, incomplete, corrupt or cannot be fetched."""


class UnsupportedArchitectureError(BuildError):
    """The checkpoint's architecture is neither a causal LM nor a supported encoder."""


class UnsupportedModeError(BuildError):
    """The quantization mode cannot run on this hardware or with this backend."""


class QualityGateError(BuildError):
    """The quantized model differs from the unquantized one by more than the thresholds allow."""
