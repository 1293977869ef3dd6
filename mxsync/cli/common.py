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
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio

from ..client import Client
from ..errors import ConfigError

__all__ = ["add_login_args", "cancel_on_signal", "client_from_args"]


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


def client_from_args(args: argparse.Namespace, **kw: object) -> Client:
    if not args.homeserver:
        raise ConfigError("no homeserver: pass --homeserver or set MXSYNC_HOMESERVER")
    if not args.user:
        raise ConfigError("no user: pass --user or set MXSYNC_USER")
    store = args.store
    if store is None:
        local = str(args.user).lstrip("@").split(":")[0]
        store = Path(".mxsync") / f"{local}.db"
    return Client(args.homeserver, args.user, password=args.password, store_path=store,
                  **kw)  # type: ignore[arg-type]


async def cancel_on_signal(
    signals: AsyncIterator[int], scope: anyio.CancelScope, say: Callable[[int], None]
) -> None:
    """Cancel ``scope`` on the first of ``signals``, after ``say(signum)``."""
    async for signum in signals:
        say(signum)
        scope.cancel()
        return
