"""`batchline cache`: checks and clean-up of the model cache, run in pods that mount it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import termination
from .cache import CacheError, check_complete, remove_aliases


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("cache", help="check or clean the model cache")
    sub = parser.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="exit 0 only if FOLDER holds a complete build (a Triton pod's init step)")
    check.add_argument("folder")
    check.add_argument("--termination-log")
    check.set_defaults(func=run_check)
    gc = sub.add_parser("gc", help="remove aliases and the builds no remaining alias uses")
    gc.add_argument("root")
    gc.add_argument("aliases", nargs="+")
    gc.add_argument("--termination-log")
    gc.set_defaults(func=run_gc)


def run_check(args: argparse.Namespace) -> int:
    try:
        report = check_complete(Path(args.folder))
    except CacheError as exc:
        print(f"batchline cache check: {exc}", file=sys.stderr)
        termination.write(args.termination_log, str(exc))
        return 1
    print(f"{args.folder}: complete build {report['key']} ({len(report['repository']['files'])} files)")
    return 0


def run_gc(args: argparse.Namespace) -> int:
    removed = remove_aliases(Path(args.root), args.aliases)
    message = f"removed {len(removed)}: {' '.join(removed)}" if removed else "nothing to remove"
    print(message)
    termination.write(args.termination_log, message)
    return 0
