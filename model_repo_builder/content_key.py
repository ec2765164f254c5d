"""The content-addressed build key: what a build depends on, hashed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from .options import BuildOptions
from .version import BUILDER_VERSION

KEY_LENGTH = 24


def compute_content_key(
    file_hashes: Mapping[str, str], options: BuildOptions, builder_version: str = BUILDER_VERSION
) -> str:
    """Hash of the checkpoint files' hashes, every build option and the builder version.

    The mode, backend and batching options are all fields of `options`; the JSON is canonical
    (sorted keys, no spaces) so that the key does not depend on dict order.
    """
    document = {
        "builder_version": builder_version,
        "files": dict(sorted(file_hashes.items())),
        "options": options.to_dict(),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]
