"""Gateway: a y-websocket server whose documents are SyncedDocs of one Matrix room.

Owns the listening socket (aiohttp), the WebSocket connections, their
authentication and the documents held open for them: WebSocket path ``/NAME``
(the "room name" of a ``WebsocketProvider``) is the document ``NAME`` of the
room. The first connection to a name opens its SyncedDoc on the gateway's one
Matrix client and waits for its initial load; later connections share it; it
is closed when no connection has used it for ``idle_close`` seconds (at most
``max_docs`` names are open at once).

Authentication: the token in the ``token`` query parameter (what a stock
provider sends with ``params: {token}``), or offered as the WebSocket
subprotocol ``mxsync.token.TOKEN`` (``protocols: ["mxsync.token." + token]``:
kept out of URLs and access logs; the gateway answers with that subprotocol),
is looked up in ``tokens`` (token -> "write" or "read"); without a known token
a connection gets ``anonymous`` (None: HTTP 401 before the upgrade). A "read"
connection receives everything, and its updates are refused (:mod:`.relay`).
Bad frames close that socket only (1003/1007, with a log line); the gateway and
its other sockets go on.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import socket
import time
from collections.abc import Collection, Mapping
from contextlib import AsyncExitStack
from typing import Any, Final, Literal

import anyio
import msgspec
from aiohttp import WSCloseCode, WSMsgType, web
from anyio.abc import TaskGroup, TaskStatus

from ..client import Client
from ..docs import SyncedDoc
from ..engine.taskgroups import StackOwner
from ..errors import ConfigError, MxsyncError, ProtocolError
from .relay import DocRelay, Peer

__all__ = ["TOKEN_PROTOCOL", "Access", "Gateway", "GatewayStatistics"]

log = logging.getLogger("mxsync.gateway")

Access = Literal["write", "read"]
_ACCESS: Final = ("write", "read")
_MAX_MESSAGE: Final = 16 * 1024 * 1024
_OPEN_TIMEOUT: Final = 120.0
#: A token offered as a WebSocket subprotocol: ``mxsync.token.<token>``.
TOKEN_PROTOCOL: Final = "mxsync.token."


class GatewayStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a :class:`Gateway` since it started."""

    #: Documents open now.
    docs: int
    #: WebSocket connections open now, and accepted in all.
    connections: int
    accepted: int
    #: Upgrades refused: no or unknown token, bad document name, too many documents.
    refused: int
    #: Sockets closed for a frame that is not a y-websocket message.
    bad_frames: int
    #: Sockets closed because they did not read fast enough (queue full).
    dropped: int
    #: Updates of read-only connections refused.
    read_only_refused: int


class _Held:
    """A document held open for the connections to one name."""

    def __init__(self) -> None:
        self.ready = anyio.Event()
        self.relay: DocRelay | None = None
        self.sdoc: SyncedDoc | None = None
        self.error: BaseException | None = None
        #: Asked for through Gateway.document(): never closed for being idle.
        self.pinned = False
        #: Closing (idle): new connections wait for ``closed``, then open it afresh.
        self.closing = False
        self.closed = anyio.Event()
        #: When a connection last joined or left (time.monotonic()).
        self.last_used = time.monotonic()


class Gateway(StackOwner):
    """``async with Gateway(client, room_id, port=8765, tokens={...}) as gw``.

    Serves y-websocket on ``host:port`` (0: a free port; ``gw.url`` says which).
    ``port=None`` listens nowhere: mount :meth:`handle` in an aiohttp app of
    your own (route ``/{name}`` or any route with a ``name`` match).
    ``read_only=True`` opens every document read-only (a gateway for a Matrix
    account without write power); ``names`` (if given) are the only document
    names served; ``doc_options`` are passed to ``open_doc``. A document no
    connection has used for ``idle_close`` seconds (default 300; None: never) is
    closed, and opened again (from the client's cache) by the next connection.
    """

    def __init__(
        self,
        client: Client,
        room_id: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = 0,
        tokens: Mapping[str, Access] | None = None,
        anonymous: Access | None = None,
        read_only: bool = False,
        max_docs: int = 64,
        idle_close: float | None = 300.0,
        names: Collection[str] | None = None,
        queue: int = 512,
        doc_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise ConfigError(f"not a room id: {room_id!r} (join the room first)")
        tokens = dict(tokens or {})
        for token, access in tokens.items():
            if not isinstance(token, str) or len(token) < 8:
                raise ConfigError("a gateway token is a string of at least 8 characters")
            if access not in _ACCESS:
                raise ConfigError(f"token access must be 'write' or 'read', not {access!r}")
        if anonymous not in (*_ACCESS, None):
            raise ConfigError(f"anonymous must be 'write', 'read' or None, not {anonymous!r}")
        if not tokens and anonymous is None:
            raise ConfigError("no way in: give tokens, or anonymous='read'/'write'")
        if max_docs < 1 or queue < 16:
            raise ConfigError("max_docs must be >= 1 and queue >= 16")
        if idle_close is not None and not idle_close > 0:
            raise ConfigError("idle_close must be > 0 seconds (or None: never)")
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"not a port: {port}")
        self.client = client
        self.room_id = room_id
        self.host = host
        self.port = port
        self.read_only = read_only
        self.max_docs = max_docs
        self.idle_close = idle_close
        self.names = frozenset(names) if names is not None else None
        self._tokens = tokens
        self._anonymous: Access | None = anonymous
        self._queue = queue
        self._doc_options = dict(doc_options or {})
        self._docs: dict[str, _Held] = {}
        self._tg: TaskGroup | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._ids = itertools.count(1)
        self.url: str | None = None
        self._counts = {"accepted": 0, "refused": 0, "bad_frames": 0, "dropped": 0,
                        "read_only_refused": 0}

    def __repr__(self) -> str:
        return f"<Gateway {self.url or '(embedded)'} for {self.room_id}>"

    # -- lifecycle ----------------------------------------------------------------

    async def _setup(self, stack: AsyncExitStack) -> None:
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        self._tg = tg
        if self.port is not None:
            await stack.enter_async_context(self._listening())

    def _closed(self) -> None:
        self._tg = None

    def web_app(self) -> web.Application:
        """An aiohttp app serving every document name at ``/{name}``."""
        app = web.Application()
        app.router.add_get("/{name:.+}", self.handle)
        app.on_shutdown.append(self.close_sockets)
        return app

    async def close_sockets(self, app: web.Application | None = None) -> None:
        """Close every WebSocket of the gateway (an aiohttp ``on_shutdown`` hook)."""
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutdown")

    def _listening(self) -> Any:
        gateway = self

        class _Listening:
            async def __aenter__(self) -> None:
                self.runner = web.AppRunner(gateway.web_app(), access_log=None,
                                            handle_signals=False)
                await self.runner.setup()
                family = socket.AF_INET6 if ":" in gateway.host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((gateway.host, gateway.port or 0))
                except OSError:
                    sock.close()
                    await self.runner.cleanup()
                    raise
                site = web.SockSite(self.runner, sock, shutdown_timeout=1.0)
                await site.start()
                shown = f"[{gateway.host}]" if family == socket.AF_INET6 else gateway.host
                gateway.url = f"ws://{shown}:{sock.getsockname()[1]}/"

            async def __aexit__(self, *exc: object) -> None:
                with anyio.CancelScope(shield=True):
                    await gateway.close_sockets()
                    await self.runner.cleanup()

        return _Listening()

    def statistics(self) -> GatewayStatistics:
        relays = [h.relay for h in self._docs.values() if h.relay is not None]
        refused_ro = self._counts["read_only_refused"] + sum(
            p.refused for r in relays for p in r.peers)
        return GatewayStatistics(
            docs=len(relays), connections=sum(len(r.peers) for r in relays),
            accepted=self._counts["accepted"], refused=self._counts["refused"],
            bad_frames=self._counts["bad_frames"], dropped=self._counts["dropped"],
            read_only_refused=refused_ro,
        )

    async def document(self, name: str) -> SyncedDoc:
        """The SyncedDoc behind ``name``, opened (and loaded) if it is not yet."""
        held = await self._held(name)
        held.pinned = True
        if held.relay is None or held.sdoc is None:
            raise RuntimeError("the gateway is stopping")
        return held.sdoc

    # -- documents ----------------------------------------------------------------

    async def _held(self, name: str) -> _Held:
        """The open document ``name``: opened if need be, never one that is closing."""
        with anyio.fail_after(_OPEN_TIMEOUT):
            while True:
                held = self._docs.get(name)
                if held is None:
                    if self._tg is None:
                        raise RuntimeError("the gateway is not running; "
                                           "use `async with Gateway(...)`")
                    if len(self._docs) >= self.max_docs:
                        raise ConfigError(f"the gateway holds {self.max_docs} documents "
                                          "already")
                    held = self._docs[name] = _Held()
                    await self._tg.start(self._hold, name, held)
                if held.closing:
                    await held.closed.wait()
                    continue
                await held.ready.wait()
                if held.error is not None:
                    raise held.error
                if not held.closing:  # it may have begun closing while we waited
                    held.last_used = time.monotonic()
                    return held

    async def _hold(self, name: str, held: _Held,
                    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with self.client.open_doc(self.room_id, name, read_only=self.read_only,
                                            **self._doc_options) as sdoc:
                await sdoc.wait_synced()
                awareness = sdoc.awareness
                async with anyio.create_task_group() as tg:
                    try:
                        await tg.start(awareness.start)  # expiry of silent clients
                    except RuntimeError:
                        pass  # the document runs it already
                    with DocRelay(sdoc.doc, awareness) as relay:
                        held.sdoc, held.relay = sdoc, relay
                        held.ready.set()
                        log.info("gateway: document %r of %s open", name, self.room_id)
                        await self._until_idle(held, relay)
                        held.closing = True
                        log.info("gateway: closing document %r of %s (idle)", name,
                                 self.room_id)
                    tg.cancel_scope.cancel()
        except MxsyncError as exc:
            log.error("gateway: cannot open document %r of %s: %s", name, self.room_id, exc)
            held.error = exc
        finally:
            held.relay = None
            held.ready.set()
            if self._docs.get(name) is held:
                del self._docs[name]
            held.closed.set()

    async def _until_idle(self, held: _Held, relay: DocRelay) -> None:
        """Return once no connection has used the document for ``idle_close`` s."""
        if self.idle_close is None:
            await anyio.sleep_forever()
            return
        idle_since = time.monotonic()
        while True:
            await anyio.sleep(min(self.idle_close / 4, 30.0))
            if relay.peers or held.pinned:
                idle_since = time.monotonic()
            elif time.monotonic() - max(idle_since, held.last_used) >= self.idle_close:
                return

    # -- connections --------------------------------------------------------------

    def _lookup(self, token: str) -> Access | None:
        for known, access in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return access
        return None

    def _access(self, request: web.Request) -> tuple[Access | None, str | None]:
        """What the connection may do, and the subprotocol to answer with (if any)."""
        for header in request.headers.getall("Sec-WebSocket-Protocol", []):
            for offered in (p.strip() for p in header.split(",")):
                if offered.startswith(TOKEN_PROTOCOL):
                    access = self._lookup(offered[len(TOKEN_PROTOCOL):])
                    if access is not None:
                        return access, offered
        token = request.query.get("token")
        if token is not None:
            access = self._lookup(token)
            if access is not None:
                return access, None
        return self._anonymous, None

    def _refuse(self, status: int, why: str, request: web.Request) -> web.Response:
        self._counts["refused"] += 1
        log.warning("gateway: refused %s from %s: %s", request.path, request.remote, why)
        return web.Response(status=status, text=why + "\n")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of one WebSocket connection to ``/{name}``."""
        name = request.match_info.get("name") or request.path.lstrip("/")
        access, protocol = self._access(request)
        if access is None:
            return self._refuse(401, "a valid token is needed (?token=... or the subprotocol "
                                f"{TOKEN_PROTOCOL}TOKEN)", request)
        if not 1 <= len(name.encode("utf-8", "replace")) <= 255:
            return self._refuse(400, "a document name is 1..255 bytes", request)
        if self.names is not None and name not in self.names:
            return self._refuse(404, f"no document {name!r} here", request)
        if name not in self._docs and len(self._docs) >= self.max_docs:
            return self._refuse(503, f"at most {self.max_docs} documents", request)
        ws = web.WebSocketResponse(max_msg_size=_MAX_MESSAGE, heartbeat=30.0,
                                   protocols=(protocol,) if protocol else ())
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._serve(ws, name, access, request)
        finally:
            self._sockets.discard(ws)
        return ws

    async def _serve(self, ws: web.WebSocketResponse, name: str, access: Access,
                     request: web.Request) -> None:
        try:
            held = await self._held(name)
        except (MxsyncError, TimeoutError) as exc:
            await ws.close(code=WSCloseCode.INTERNAL_ERROR,
                           message=f"cannot open the document: {exc}"[:120].encode())
            return
        relay = held.relay
        if relay is None:
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"document closed")
            return
        read_only = access == "read" or self.read_only
        peer = Peer(f"#{next(self._ids)} {name!r} {request.remote}", read_only=read_only,
                    queue=self._queue)
        self._counts["accepted"] += 1
        relay.join(peer)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write, ws, peer, tg.cancel_scope)
                await self._read(ws, relay, peer)
                tg.cancel_scope.cancel()
        finally:
            self._counts["read_only_refused"] += peer.refused
            peer.refused = 0
            relay.leave(peer)
            held.last_used = time.monotonic()
        if peer.dropped and not ws.closed:
            self._counts["dropped"] += 1
            log.warning("gateway: %r does not read fast enough; closing it", peer)
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow")

    async def _read(self, ws: web.WebSocketResponse, relay: DocRelay, peer: Peer) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                try:
                    relay.receive(peer, msg.data)
                except ProtocolError as exc:
                    self._counts["bad_frames"] += 1
                    log.warning("gateway: closing %r: %s", peer, exc)
                    await ws.close(code=WSCloseCode.INVALID_TEXT, message=b"bad message")
                    return
            elif msg.type == WSMsgType.TEXT:
                self._counts["bad_frames"] += 1
                log.warning("gateway: closing %r: a text frame (y-websocket is binary)", peer)
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"binary only")
                return
            elif msg.type == WSMsgType.ERROR:
                log.info("gateway: %r: %s", peer, ws.exception())
                return
            if peer.dropped:
                return

    async def _write(self, ws: web.WebSocketResponse, peer: Peer,
                     scope: anyio.CancelScope) -> None:
        try:
            async for message in peer.outgoing:
                await ws.send_bytes(message)
        except (ConnectionError, RuntimeError):
            pass  # the socket closed under us: the reader sees it too
        # The queue ended: the peer left, or overflowed (the reader then closes it).
        if peer.dropped:
            scope.cancel()
