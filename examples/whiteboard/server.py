"""The whiteboard's web server: the page, and the gateway between its Yjs document
and the room's SyncedDoc.

The page (``static/``, built from ``web/``) is a Yjs app: it holds a ``Y.Doc``
and connects with a stock y-websocket ``WebsocketProvider`` to ``/yjs/whiteboard``
on this server, which is an :class:`mxsync.gateway.Gateway` mounted in the
page's aiohttp app (the path an app developer takes: their Yjs app, and a
gateway in front of Matrix). Presence and cursors are the provider's awareness
states, never in the document.

- ``GET /api/config``: ``{user, room, room_name, doc, ws, board: {w, h}}``, what
  the page needs before it connects;
- ``GET /api/board``: the board as JSON (strokes in z-order, who is present), for
  scripts and tests;
- ``GET /api/stats``: the SyncedDoc's and the gateway's counters.

The page is served to 127.0.0.1 for this server's one user (its Matrix login),
so its WebSocket needs no token (``anonymous="write"``, and only the
whiteboard's document name is served).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec
from aiohttp import web
from anyio.abc import TaskStatus

from mxsync import Client, MxsyncError, SyncedDoc
from mxsync.gateway import Gateway

from .._web import json_dumps, page_app, serve, unless_stopped
from .model import BOARD_H, BOARD_W, Board, present_users

__all__ = ["DOC_NAME", "WS_PATH", "WhiteboardApp", "run_whiteboard"]

log = logging.getLogger("examples.whiteboard")

DOC_NAME = "whiteboard"
WS_PATH = "/yjs"
STATIC = Path(__file__).with_name("static")


class WhiteboardApp:
    """One user's pages: the static page, its config, and the gateway's route."""

    def __init__(self, gateway: Gateway, sdoc: SyncedDoc, room_name: str | None = None) -> None:
        self.gateway = gateway
        self.sdoc = sdoc
        self.board = Board(sdoc.doc, gateway.client.user_id)
        self.room_name = room_name

    def web_app(self) -> web.Application:
        app = page_app(STATIC)
        app.router.add_get(WS_PATH + "/{name:.+}", self.gateway.handle)
        app.router.add_get("/api/config", self._api_config)
        app.router.add_get("/api/board", self._api_board)
        app.router.add_get("/api/stats", self._api_stats)
        app.on_shutdown.append(self.gateway.close_sockets)
        return app

    def present(self) -> list[str]:
        return present_users(self.sdoc.awareness.states)

    async def _api_config(self, request: web.Request) -> web.Response:
        return web.json_response({
            "user": self.board.user,
            "room": self.sdoc.room_id,
            "room_name": self.room_name,
            "doc": self.sdoc.name,
            "ws": WS_PATH,
            "board": {"w": BOARD_W, "h": BOARD_H},
        }, dumps=json_dumps)

    async def _api_board(self, request: web.Request) -> web.Response:
        body = {"user": self.board.user, "room": self.sdoc.room_id,
                **self.board.snapshot(self.present())}
        return web.json_response(body, dumps=json_dumps)

    async def _api_stats(self, request: web.Request) -> web.Response:
        body = {"doc": msgspec.to_builtins(self.sdoc.statistics()),
                "gateway": msgspec.to_builtins(self.gateway.statistics()),
                "state_bytes": len(self.sdoc.doc.get_update())}
        return web.json_response(body, dumps=json_dumps)


async def _room_name(client: Client, room_id: str) -> str | None:
    try:
        name = (await client.get_state(room_id, "m.room.name") or {}).get("name")
    except MxsyncError:
        return None
    return name if isinstance(name, str) and name else None


async def run_whiteboard(
    client: Client,
    room: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    doc_name: str = DOC_NAME,
    on_ready: Callable[[str], None] | None = None,
    stop: anyio.Event | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the whiteboard of ``room`` for ``client``'s user until ``stop`` (or cancelled).

    Joins the room (the user must be invited or a member), opens the room's
    SyncedDoc ``doc_name`` through a gateway, waits until it has caught up, then
    serves; reports the page's URL through ``task_status`` (and ``on_ready``).
    On ``stop``, waits (at most 5 s) until the room has every change.
    """
    room_id = await client.join(room)
    async with Gateway(client, room_id, port=None, anonymous="write",
                       names=[doc_name]) as gateway:
        opened: list[SyncedDoc] = []

        async def open_board() -> None:
            opened.append(await gateway.document(doc_name))

        if not await unless_stopped(stop, open_board()):
            return  # stopped while loading: nothing to serve or to say
        sdoc = opened[0]
        app = WhiteboardApp(gateway, sdoc, await _room_name(client, room_id))
        async with serve(app.web_app(), host, port) as url:
            task_status.started(url)
            if on_ready is not None:
                on_ready(url)
            await (stop.wait() if stop is not None else anyio.sleep_forever())
        # A normal stop (not a cancellation, which stops the document's tasks
        # too): send what the pages drew last, then close the document.
        with anyio.move_on_after(5):
            try:
                await sdoc.flush()
            except MxsyncError as exc:
                log.warning("could not send the last changes: %s", exc)
