"""The ``mxsync`` command: one subcommand per job, each a small function.

Subcommands are registered by the modules of this package that own them
(``add_*_parser``), so this file only assembles them and configures logging.
They are imported when the parser is built, not with the package, so that
``python -m mxsync.cli.devserver`` does not find itself imported already.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mxsync",
        description="Keep shared data current through Matrix rooms.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .devserver import add_devserver_parser

    add_devserver_parser(sub)
    from .demo import add_demo_parser

    add_demo_parser(sub)
    for module in ("mxsync.cli.doc", "mxsync.cli.sensor", "mxsync.cli.room",
                   "mxsync.cli.gateway", "mxsync.cli.fleet"):
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
    # A wait for the homeserver's rate limit is said, not suffered in silence.
    logging.getLogger("mxsync.ratelimit").setLevel(min(level, logging.INFO))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)
