"""``mxsync demo`` (``make demo``): the command around :func:`mxsync.dev.demo.run_demo`.

Owns the command's flags, its signal handling (SIGINT and SIGTERM stop the demo
cleanly) and exit statuses; what runs is :mod:`mxsync.dev.demo`'s. Also runs as
``python -m mxsync.cli.demo [options]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import anyio

from ..dev.demo import DEFAULT_STATE_DIR, run_demo, sayer
from ..errors import ConfigError, DemoError, DevServerError, MxsyncError
from .common import cancel_on_signal

__all__ = ["add_demo_parser", "cmd_demo", "main"]


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to a subcommand set; ``args.func`` is :func:`cmd_demo`."""
    p = sub.add_parser(
        "demo",
        help="run the examples (whiteboard, sensors, dashboard) on an embedded homeserver",
        description="Start an embedded Synapse, the demo users and rooms, simulated "
        "sensors, a dashboard and two whiteboards; print their URLs. Ctrl-C stops all.",
    )
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, type=Path,
                   help="default: %(default)s")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop by itself this long after the pages are up")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the ``demo`` subcommand; return the exit status."""
    say = sayer(sys.stdout)

    async def main() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_on_signal, signals, tg.cancel_scope,
                              lambda _: say("stopping ..."))
                await run_demo(args.state_dir, args.seconds)
                tg.cancel_scope.cancel()

    try:
        anyio.run(main, backend="asyncio")
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, DemoError | DevServerError | ConfigError | MxsyncError):
            sayer(sys.stderr)(f"mxsync demo: {exc}")
            return 1
        raise
    finally:
        _quiet_if_closed(sys.stdout)
    return 0


def _quiet_if_closed(stream: TextIO) -> None:
    """A stdout whose reader is gone would fail once more at exit (its buffer is
    flushed then): point it at /dev/null instead."""
    try:
        stream.flush()
    except (BrokenPipeError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mxsync.cli.demo [options]``."""
    parser = argparse.ArgumentParser(prog="mxsync")
    add_demo_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    return cmd_demo(args)


if __name__ == "__main__":
    sys.exit(main())
