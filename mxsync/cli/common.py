"""Shared pieces of the ``mxsync`` subcommands: login options, running a client,
stopping on a signal.

Every subcommand that talks to a homeserver takes the same options, each with
an environment variable as default, so that scripts do not put passwords on
the command line::

    --homeserver URL   MXSYNC_HOMESERVER
    --user ID          MXSYNC_USER
    --password PW      MXSYNC_PASSWORD   (or a session kept in --store)
    --store PATH       MXSYNC_STORE      (default .mxsync/<user>.db)
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio

from ..client import Client
from ..errors import ConfigError, MxsyncError

__all__ = ["add_login_args", "cancel_on_signal", "client_from_args", "client_store",
           "parse_time", "resolve_room", "run_command"]


def add_login_args(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--homeserver", default=env("MXSYNC_HOMESERVER"),
                        help="homeserver URL (env MXSYNC_HOMESERVER)")
    parser.add_argument("--user", default=env("MXSYNC_USER"),
                        help="user id, @name:server (env MXSYNC_USER)")
    parser.add_argument("--password", default=env("MXSYNC_PASSWORD"),
                        help="password (env MXSYNC_PASSWORD)")
    parser.add_argument("--store", default=env("MXSYNC_STORE"),
                        help="client store file (env MXSYNC_STORE; default .mxsync/<user>.db)")


def client_store(args: argparse.Namespace) -> Path:
    """The store of ``--store``, by default ``.mxsync/<localpart>.db``."""
    if args.store is not None:
        return Path(args.store)
    local = str(args.user).lstrip("@").split(":")[0]
    return Path(".mxsync") / f"{local}.db"


def client_from_args(args: argparse.Namespace, **kw: object) -> Client:
    if not args.homeserver:
        raise ConfigError("no homeserver: pass --homeserver or set MXSYNC_HOMESERVER")
    if not args.user:
        raise ConfigError("no user: pass --user or set MXSYNC_USER")
    return Client(args.homeserver, args.user, password=args.password,
                  store_path=client_store(args), **kw)  # type: ignore[arg-type]


async def cancel_on_signal(
    signals: AsyncIterator[int], scope: anyio.CancelScope, say: Callable[[int], None]
) -> None:
    """Cancel ``scope`` on the first of ``signals``, after ``say(signum)``."""
    async for signum in signals:
        say(signum)
        scope.cancel()
        return


def run_command(prog: str, main: Callable[[], Awaitable[object]]) -> int:
    """Run ``main`` until it returns or the first SIGINT/SIGTERM; return the exit status.

    A refusal is printed once, as ``prog: message`` (no traceback); a signal stops
    every wait at once (130).
    """
    stopped: list[int] = []

    async def run() -> object:
        result: object = None
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_on_signal, signals, tg.cancel_scope, stopped.append)
                result = await main()
                tg.cancel_scope.cancel()
        return result

    held = _HeldErrors()
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(held)
    try:
        result = anyio.run(run, backend="asyncio")
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if not isinstance(exc, MxsyncError):
            held.release(handlers)
            raise
        # The error that ended the command says it all: once, without the log
        # lines of the library that raised it.
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        for handler in handlers:
            handler.removeFilter(held)
    held.release(handlers)
    if stopped:
        return 130
    return int(result) if isinstance(result, int) else 0


class _HeldErrors(logging.Filter):
    """Holds back mxsync's ERROR records while a command runs: a command that
    fails reports its error itself; one that succeeds gets them afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.name.startswith("mxsync."):
            self.records.append(record)
            return False
        return True

    def release(self, handlers: list[logging.Handler]) -> None:
        records, self.records = self.records, []
        for record in records:
            for handler in handlers:
                handler.handle(record)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
             "w": 604_800_000}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """A time in ms since the epoch from ``1h``/``30m``/``2d`` (that long ago),
    ``now``, an int of ms, or an ISO 8601 time (UTC unless it says otherwise)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    text = text.strip()
    if text == "now":
        return now
    m = _DURATION.fullmatch(text)
    if m:
        return now - int(float(m.group(1)) * _UNITS_MS[m.group(2)])
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"not a time: {text!r} (use 1h, 30m, now, ms since the epoch or ISO 8601)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


async def resolve_room(client: Client, room: str) -> str:
    """A room id as given, or the room an alias names (joined)."""
    if room.startswith("#"):
        return await client.join(room)
    if not room.startswith("!"):
        raise ConfigError(f"not a room id or alias: {room!r}")
    return room
