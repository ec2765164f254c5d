"""The `batchline` command: each subsystem registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# Each module exposes `register(subparsers)`, which adds its subcommands and sets
# `func` on them. Imports are lazy so that `batchline operator` never imports torch.
SUBCOMMAND_MODULES: dict[str, str] = {
    "operator": "batchline.operator_cli",
    "local": "batchline.local.cli",
    "build": "model_repo_builder.cli",
    "serve": "model_repo_builder.serve_cli",
    "cache": "model_repo_builder.cache_cli",
    "autoscale": "batchline.autoscaler.cli",
}


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in SUBCOMMAND_MODULES else None
    for name, module in SUBCOMMAND_MODULES.items():
        if wanted is None or name == wanted:
            importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser(args_list).parse_args(args_list)
    func: Callable[[argparse.Namespace], int | None] = args.func
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
