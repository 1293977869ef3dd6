"""What the example web apps share: command-line options, the local web server,
change notification, and running until Ctrl-C.

Each example is one process: an mxsync :class:`~mxsync.Client` and a small
aiohttp server on 127.0.0.1 that serves the page (HTML, JS and CSS from the
example's ``static/`` folder, nothing from the internet) and talks to it over a
WebSocket.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from aiohttp import WSCloseCode, web

from mxsync.cli.common import add_login_args
from mxsync.errors import MxsyncError

__all__ = [
    "SOCKETS",
    "Changes",
    "add_app_args",
    "json_dumps",
    "page_app",
    "run_app",
    "serve",
    "unless_stopped",
]

log = logging.getLogger("examples")

_NO_CACHE = {"Cache-Control": "no-cache"}

#: The app's open WebSockets, closed on shutdown.
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def add_app_args(parser: argparse.ArgumentParser) -> None:
    """Login options (``--homeserver``, ``--user``, ...), ``--room`` and the listen address."""
    add_login_args(parser)
    parser.add_argument("--room", required=True, help="room id (or alias) to use")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the page is served on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0,
                        help="port the page is served on (default: a free one)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")


class Changes:
    """A change counter that tasks can wait on; ``touch`` is synchronous.

    pycrdt observers are synchronous callbacks: they ``touch``, and each page's
    writer task wakes up, sends the new state, and waits again. Several touches
    before a writer wakes up coalesce into one send.
    """

    def __init__(self) -> None:
        self.version = 0
        self._event = anyio.Event()

    def touch(self) -> None:
        self.version += 1
        self._event.set()
        self._event = anyio.Event()

    async def wait_newer(self, seen: int) -> int:
        """Return the current version once it is newer than ``seen``."""
        while self.version <= seen:
            await self._event.wait()
        return self.version


def page_app(static_dir: Path, index: str = "index.html") -> web.Application:
    """An aiohttp app serving ``static_dir/index`` at ``/`` and the folder at ``/static``.

    The app closes the WebSockets its handlers add to ``app[SOCKETS]`` on shutdown.
    """
    app = web.Application()
    sockets: set[web.WebSocketResponse] = set()
    app[SOCKETS] = sockets

    async def index_page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static_dir / index, headers=_NO_CACHE)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def close_sockets(app: web.Application) -> None:
        for ws in list(sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    app.router.add_get("/", index_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static", static_dir, append_version=False)
    app.on_shutdown.append(close_sockets)
    return app


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0: a free port); yield the page's URL."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        bound = sock.getsockname()[1]
        site = web.SockSite(runner, sock, shutdown_timeout=1.0)
        await site.start()
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"http://{shown}:{bound}/"
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


#: How long the first signal lets ``main`` leave normally before cancelling it.
STOP_GRACE = 20.0


async def unless_stopped(stop: anyio.Event | None, awaitable: Awaitable[object]) -> bool:
    """Await ``awaitable`` unless ``stop`` is set first; True if it completed.

    For the waits of a start (a load, a join) that a stop must not sit out."""
    if stop is None:
        await awaitable
        return True
    done = False
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        await awaitable
        done = True
        tg.cancel_scope.cancel()
    return done


def run_app(main: Callable[[anyio.Event], Awaitable[None]], *, verbose: int = 0,
            prog: str) -> int:
    """Run ``main(stop)`` on anyio's asyncio backend; return the exit status.

    The first SIGINT (Ctrl-C) or SIGTERM sets ``stop``: ``main`` is expected to
    return soon after, leaving its ``async with`` blocks normally, so that a
    publisher marks its devices offline and a whiteboard marks its user absent
    (both need the homeserver for that). A second signal cancels ``main``, and so
    does the first after ``STOP_GRACE`` seconds: a stop never hangs.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def guarded() -> None:
        stop = anyio.Event()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def watch_signals() -> None:
                    async for _ in signals:
                        if stop.is_set():
                            tg.cancel_scope.cancel()
                            return
                        stop.set()
                        tg.start_soon(cancel_later)

                async def cancel_later() -> None:
                    await anyio.sleep(STOP_GRACE)
                    log.warning("still stopping after %g s; cancelling", STOP_GRACE)
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_signals)
                await main(stop)
                tg.cancel_scope.cancel()

    try:
        anyio.run(guarded, backend="asyncio")
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # noqa: BLE001 - unwrap task group errors for the user
        error = _single(exc)
        if isinstance(error, MxsyncError | OSError):
            print(f"{prog}: {error}", file=sys.stderr)
            return 1
        raise
    return 0


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
