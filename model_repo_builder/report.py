"""build-report.json: what a build used, what it measured, and what it wrote.

It sits next to the repository, not in it, because it holds the build time: the repository files
stay byte-identical between builds of the same key.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

REPORT_FILE = "build-report.json"
# The Triton model repository inside a build folder (what tritonserver --model-repository takes).
REPOSITORY_DIR = "repository"
SCHEMA_VERSION = 1
LIBRARIES = ("torch", "torchao", "transformers", "tokenizers", "safetensors", "huggingface_hub", "numpy")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def write_report(folder: Path, report: dict[str, Any]) -> None:
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def read_report(folder: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((folder / REPORT_FILE).read_text())
    return report
