"""The ``mxsync`` command: one subcommand per job, each a small function.

Subcommands are registered by the modules that own them (``add_*_parser``),
so this file only assembles them and configures logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .devserver import add_devserver_parser

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mxsync",
        description="Keep shared data current through Matrix rooms.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_devserver_parser(sub)
    from .demo import add_demo_parser

    add_demo_parser(sub)
    for module in ("mxsync.doc_cli", "mxsync.sensor_cli"):
        try:
            mod = __import__(module, fromlist=["add_parser"])
        except ImportError:
            continue
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
