"""The `batchline` command: each installed part registers its own subcommands.

Subcommands come from the `batchline.commands` entry points (see pyproject.toml): the operator's own,
the builder's, and, where the development tooling is installed, `local`, `demo` and `autoscale`. Each
module is imported only when its subcommand runs (or for --help), so `batchline operator` never
imports torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

GROUP = "batchline.commands"


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {ep.name: ep for ep in entry_points(group=GROUP)}
    wanted = argv[0] if argv and argv[0] in commands else None
    for name, ep in sorted(commands.items()):
        if wanted is None or name == wanted:
            ep.load().register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _parser(args_list).parse_args(args_list)
    func: Callable[[argparse.Namespace], int | None] = args.func
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
