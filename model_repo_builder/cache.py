"""The model cache on disk: one folder per content key, plus aliases that the operator names.

    <root>/<content key>/{build-report.json, repository/}   what build() writes
    <root>/<alias> -> <content key>                          a relative symlink per operator build key

The operator names a build by its spec (it cannot hash the checkpoint before the build runs); the
alias maps that name to the content-addressed build, so two specs that resolve to the same content
share one folder. Aliases are swapped atomically (a new symlink renamed over the old one).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import BuildError
from .report import REPORT_FILE, REPOSITORY_DIR, read_report


class CacheError(BuildError):
    """A cache folder is missing, incomplete or not what the alias says."""


def link_alias(root: Path, alias: str, key: str) -> Path:
    """Points `root/alias` at `root/key`; returns the alias path."""
    if not alias or "/" in alias or alias.startswith("."):
        raise CacheError(f"alias {alias!r} must be a plain folder name")
    if alias == key:
        return root / key
    link = root / alias
    if link.exists() and not link.is_symlink():
        raise CacheError(f"{link} exists and is not an alias; remove it or choose another alias")
    staging = root / f".{alias}.link"
    staging.unlink(missing_ok=True)
    staging.symlink_to(key)
    os.replace(staging, link)
    return link


def check_complete(folder: Path) -> dict[str, Any]:
    """Raises CacheError unless `folder` holds a finished build with every file its report lists."""
    if not (folder / REPORT_FILE).is_file():
        raise CacheError(f"{folder} holds no finished build ({REPORT_FILE} is missing)")
    report = read_report(folder)
    files = report.get("repository", {}).get("files", {})
    missing = [name for name in files if not (folder / REPOSITORY_DIR / name).is_file()]
    if missing:
        raise CacheError(f"{folder} is incomplete: {len(missing)} files missing, first {missing[0]}")
    return report


def remove_aliases(root: Path, aliases: Iterable[str]) -> list[str]:
    """Removes the aliases, then every build folder that they pointed at and no alias still does.

    Build folders that never had an alias (built by hand) are left alone. Returns what was removed.
    """
    removed: list[str] = []
    targets: set[str] = set()
    for alias in aliases:
        link = root / alias
        if link.is_symlink():
            targets.add(os.readlink(link))
            link.unlink()
            removed.append(alias)
        elif (link / REPORT_FILE).is_file():
            targets.add(alias)  # an alias equal to its content key names the folder itself
    still_used = {os.readlink(p) for p in root.iterdir() if p.is_symlink()}
    for target in sorted(targets - still_used):
        folder = root / target
        if folder.is_dir() and not folder.is_symlink() and folder.parent == root:
            shutil.rmtree(folder)
            removed.append(target)
    return removed
