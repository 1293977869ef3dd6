"""``mxsync devserver``: serve an embedded Synapse until Ctrl-C.

Owns the command's flags, its signal handling and exit statuses; the server
itself is :class:`mxsync.dev.DevServer`, several federating ones (``--federation
N``) a :class:`mxsync.dev.Federation` in ``STATE_DIR/federation/0..N-1``. Prints
the URL once ready; with ``--federation``, one line per server: its URL and its
server name. Also runs as ``python -m mxsync.cli.devserver [options]``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, get_args

import anyio

from ..dev import DEFAULT_STATE_DIR, Database, DevServer, Federation, RateLimitMode
from ..errors import ConfigError, DevServerError
from .common import cancel_on_signal

__all__ = [
    "add_devserver_parser",
    "cmd_devserver",
    "main",
    "run_devserver",
    "run_federation",
]

log = logging.getLogger("mxsync.devserver")


async def run_devserver(
    state_dir: str | Path = DEFAULT_STATE_DIR,
    *,
    port: int | None = None,
    rate_limits: RateLimitMode = "default",
    server_name: str = "localhost",
    python: str = sys.executable,
    startup_timeout: float = 60.0,
    database: Database = "sqlite",
    app_services: list[str] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation); print the URL once ready.

    The signal handlers are installed before Synapse starts, so a Ctrl-C during
    startup also stops it cleanly; a requested stop returns normally.
    """
    server = DevServer(
        state_dir,
        port=port,
        rate_limits=rate_limits,
        server_name=server_name,
        python=python,
        startup_timeout=startup_timeout,
        database=database,
        app_services=app_services or (),
    )
    await _serve(server, lambda: [server.url])


async def run_federation(
    state_dir: str | Path = DEFAULT_STATE_DIR,
    servers: int = 2,
    *,
    rate_limits: RateLimitMode = "default",
    database: Database = "sqlite",
    python: str = sys.executable,
    startup_timeout: float = 120.0,
) -> None:
    """Serve ``servers`` federating Synapses until SIGINT/SIGTERM, as :func:`run_devserver`.

    Prints one line per server once all are ready: its URL and its server name.
    """
    if servers < 1:
        raise ConfigError(f"--federation needs at least 1 server, not {servers}")
    fed = Federation(
        Path(state_dir) / "federation",
        [database] * servers,
        rate_limits=rate_limits,
        python=python,
        startup_timeout=startup_timeout,
    )
    await _serve(fed, lambda: [f"{hs.url} {hs.server_name}" for hs in fed.servers])


async def _serve(
    server: AbstractAsyncContextManager[Any], lines: Callable[[], list[str]]
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_on_signal, signals, tg.cancel_scope, _log_signal)
                async with server:
                    print("\n".join(lines()), flush=True)
                    await anyio.sleep_forever()
        except BaseExceptionGroup as group:
            # The watcher never fails, so the group holds the server's one error.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise


def _log_signal(signum: int) -> None:
    log.info("got %s; stopping synapse", signal.Signals(signum).name)


def add_devserver_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``devserver`` to a subcommand set; ``args.func`` is :func:`cmd_devserver`."""
    parser = subparsers.add_parser(
        "devserver",
        help="run an embedded Synapse for development (`devserver user add NAME`: users)",
        description="Run a real Synapse on 127.0.0.1, print its URL, serve until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument(
        "--rate-limits",
        choices=list(get_args(RateLimitMode)),
        default="default",
        help="'default' keeps Synapse's message rate limit, 'relaxed' lifts it",
    )
    parser.add_argument("--server-name", default="localhost", help="default: %(default)s")
    parser.add_argument(
        "--database",
        choices=list(get_args(Database)),
        default="sqlite",
        help="'postgres' runs Synapse on a PostgreSQL cluster of its own in the state dir "
        "(needs Debian's postgresql package and psycopg2-binary)",
    )
    parser.add_argument(
        "--app-service", action="append", default=[], metavar="FILE",
        help="install an application service registration (repeatable), e.g. the fleet "
        "gateway's from `mxsync fleet registration`",
    )
    parser.add_argument(
        "--federation",
        type=int,
        default=None,
        metavar="N",
        help="run N Synapses that federate with each other (in STATE_DIR/federation/), "
        "and print each one's URL and server name",
    )
    parser.set_defaults(func=cmd_devserver)
    from .user import add_user_parser

    add_user_parser(parser)
    return parser


def cmd_devserver(args: argparse.Namespace) -> int:
    """Run the ``devserver`` subcommand; return the exit status."""
    if args.federation is not None:
        if args.port is not None or args.server_name != "localhost":
            print("mxsync devserver: --federation picks the ports and server names itself "
                  "(no --port or --server-name)", file=sys.stderr)
            return 2
        run = functools.partial(run_federation, args.state_dir, args.federation,
                                rate_limits=args.rate_limits, database=args.database)
    else:
        run = functools.partial(run_devserver, args.state_dir, port=args.port,
                                rate_limits=args.rate_limits, server_name=args.server_name,
                                database=args.database, app_services=args.app_service)
    try:
        anyio.run(run, backend="asyncio")
    except KeyboardInterrupt:
        return 130
    except (DevServerError, ConfigError) as exc:
        print(f"mxsync devserver: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mxsync.cli.devserver [options]``."""
    parser = argparse.ArgumentParser(prog="mxsync")
    add_devserver_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["devserver", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
