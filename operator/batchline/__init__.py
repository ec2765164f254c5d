"""Batchline: a Kubernetes operator that builds, serves and autoscales LLMs on Triton."""

__version__ = "0.1.0"
