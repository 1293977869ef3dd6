"""The whiteboard's web server: one user's page(s) <-> the room's SyncedDoc.

The page (``static/``) talks to this server over one WebSocket, ``/ws``:

- server -> page: ``{"type": "hello", "user", "room", "room_name", "board": {"w", "h"}}``
  once, then ``{"type": "board", "version", "strokes": [...], "presence": [...]}``
  whenever the document changes (local or remote edits, coalesced), and every
  30 s so that presence fades out for users whose server died;
  ``{"type": "error", "message"}`` for a refused message.
- page -> server: ``{"op": "stroke", "stroke": {"id", "color", "width",
  "points"}}``, ``{"op": "erase", "id"}``, ``{"op": "undo"}``, ``{"op": "clear"}``.

The server is the only writer of the document on this side; it observes the
whole ``Doc`` (``doc.observe``) and pushes the board as JSON to every page.
``GET /api/board`` returns the same JSON (for scripts and tests).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from aiohttp import WSMsgType, web
from anyio.abc import TaskStatus

from mxsync import Client, MxsyncError

from .._web import SOCKETS, Changes, json_dumps, page_app, serve, unless_stopped
from .model import BOARD_H, BOARD_W, HEARTBEAT_MS, Board, InvalidStroke

__all__ = ["DOC_NAME", "WhiteboardApp", "run_whiteboard"]

log = logging.getLogger("examples.whiteboard")

DOC_NAME = "whiteboard"
STATIC = Path(__file__).with_name("static")
_REFRESH_SECONDS = 30.0
_MAX_MESSAGE = 256 * 1024


class WhiteboardApp:
    """The pages of one user, bound to a :class:`Board`."""

    def __init__(self, board: Board, room: str, room_name: str | None = None) -> None:
        self.board = board
        self.room = room
        self.room_name = room_name
        self.changes = Changes()
        self.pages = 0
        self._subscription: Any = None

    def __enter__(self) -> WhiteboardApp:
        self._subscription = self.board.doc.observe(lambda _event: self.changes.touch())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._subscription is not None:
            self.board.doc.unobserve(self._subscription)
            self._subscription = None

    def snapshot(self) -> dict[str, Any]:
        return {"type": "board", "version": self.changes.version, **self.board.snapshot()}

    def web_app(self) -> web.Application:
        app = page_app(STATIC)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/api/board", self._api_board)
        return app

    async def heartbeat(self) -> None:
        """Refresh this user's presence while a page is open."""
        while True:
            await anyio.sleep(HEARTBEAT_MS / 1000)
            if self.pages:
                self.board.set_presence(self.pages)

    # -- handlers --------------------------------------------------------------

    async def _api_board(self, request: web.Request) -> web.Response:
        body = {"user": self.board.user, "room": self.room, **self.snapshot()}
        return web.json_response(body, dumps=json_dumps)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=_MAX_MESSAGE)
        await ws.prepare(request)
        sockets = request.app[SOCKETS]
        sockets.add(ws)
        self._set_pages(+1)
        try:
            await ws.send_str(json_dumps({
                "type": "hello",
                "user": self.board.user,
                "room": self.room,
                "room_name": self.room_name,
                "board": {"w": BOARD_W, "h": BOARD_H},
            }))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._push_board, ws)
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT:
                        error = self._apply(msg.data)
                        if error is not None:
                            await ws.send_str(json_dumps({"type": "error", "message": error}))
                    elif msg.type == WSMsgType.ERROR:
                        break
                tg.cancel_scope.cancel()
        except* ConnectionError:
            pass  # the page went away
        finally:
            sockets.discard(ws)
            self._set_pages(-1)
        return ws

    async def _push_board(self, ws: web.WebSocketResponse) -> None:
        seen = -1
        while not ws.closed:
            with anyio.move_on_after(_REFRESH_SECONDS):
                seen = await self.changes.wait_newer(seen)
            await ws.send_str(json_dumps(self.snapshot()))
            await anyio.sleep(0.02)  # coalesce bursts of updates into one push

    def _set_pages(self, delta: int) -> None:
        self.pages = max(0, self.pages + delta)
        self.board.set_presence(self.pages)

    def _apply(self, text: str) -> str | None:
        """Apply one message from a page; return an error message or None."""
        try:
            msg = json.loads(text)
        except ValueError:
            return "not JSON"
        if not isinstance(msg, dict):
            return "a message is an object"
        op = msg.get("op")
        try:
            if op == "stroke":
                self.board.draw(msg.get("stroke"))
            elif op == "erase":
                self.board.erase(msg.get("id"))
            elif op == "undo":
                self.board.undo()
            elif op == "clear":
                self.board.clear()
            else:
                return f"unknown op {op!r}"
        except InvalidStroke as exc:
            return f"stroke refused: {exc}"
        return None


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
    SyncedDoc ``doc_name``, waits until it has caught up, then serves; reports
    the page's URL through ``task_status`` (and ``on_ready``). On ``stop``, marks
    the user absent and waits (at most 5 s) until the room has every change.
    """
    room_id = await client.join(room)
    async with client.open_doc(room_id, doc_name) as sdoc:
        if not await unless_stopped(stop, sdoc.wait_synced()):
            return  # stopped while loading: nothing to serve or to say
        board = Board(sdoc.doc, client.user_id)
        room_name = await _room_name(client, room_id)
        try:
            with WhiteboardApp(board, room_id, room_name) as app:
                async with serve(app.web_app(), host, port) as url, \
                        anyio.create_task_group() as tg:
                    tg.start_soon(app.heartbeat)
                    task_status.started(url)
                    if on_ready is not None:
                        on_ready(url)
                    await (stop.wait() if stop is not None else anyio.sleep_forever())
                    tg.cancel_scope.cancel()
        finally:
            board.set_presence(0)
        # A normal stop (not a cancellation, which stops the document's tasks
        # too): tell the room this user left, then close the document.
        with anyio.move_on_after(5):
            try:
                await sdoc.flush()
            except MxsyncError as exc:
                log.warning("could not send the last changes: %s", exc)
