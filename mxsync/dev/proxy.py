"""A TCP proxy on 127.0.0.1 whose link a test can cut and heal, without privileges.

:class:`TcpProxy` owns one listening socket and every connection accepted on
it; a :class:`~mxsync.dev.federation.Federation` puts one in front of each
Synapse's federation listener, so that whatever federates with that server goes
through it.

Invariants:

- The listening socket is bound on entry (port 0 picks a free one) and held
  until exit, so the port a server name carries can never be taken meanwhile.
- Connected: bytes are relayed both ways as they come.
- Cut with ``"drop"`` (a black hole): nothing is relayed either way and new
  connections are accepted but not connected onwards; the held bytes flow on
  heal, as TCP's retransmissions would deliver them once a route is back.
- Cut with ``"reject"``: every open connection is reset (RST) and new ones are
  reset as soon as they are accepted; heal lets new connections through.
- The target may be unset at first (the server behind is not started yet):
  connections wait for :meth:`set_target`, as they wait for a heal.
- Every connection lives in the proxy's task group: leaving the context closes
  them all.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.stapled import MultiListener

__all__ = ["CutMode", "TcpProxy"]

log = logging.getLogger("mxsync.devserver")

CutMode = Literal["drop", "reject"]
_CHUNK = 65536
_CONNECT_TIMEOUT = 10.0


def _reset(stream: SocketStream) -> None:
    """Make the next close of ``stream`` send RST instead of FIN."""
    with contextlib.suppress(OSError):
        raw = stream.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class TcpProxy(anyio.AsyncContextManagerMixin):
    """Relay ``127.0.0.1:port`` to a target, with a link to :meth:`cut` and :meth:`heal`.

    ::

        async with TcpProxy(target=("127.0.0.1", 8448)) as proxy:
            ...  # peers connect to proxy.port
            proxy.cut("drop")
            proxy.heal()
    """

    def __init__(self, *, port: int = 0, target: tuple[str, int] | None = None) -> None:
        self._requested_port = port
        self._target = target
        self._mode: CutMode | None = None
        # Set while the link is up and a target is known; replaced by a fresh
        # Event on every cut, since an anyio Event cannot be cleared.
        self._open = anyio.Event()
        self._live: set[anyio.CancelScope] = set()
        self._streams: set[SocketStream] = set()
        self._listener: MultiListener[SocketStream] | None = None
        self.accepted = 0
        if target is not None:
            self._open.set()

    # ------------------------------------------------------------------ state

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("TcpProxy has no port outside its context")
        port: int = self._listener.extra(SocketAttribute.local_port)
        return port

    @property
    def mode(self) -> CutMode | None:
        """``None`` while connected, else how the link is cut."""
        return self._mode

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._live)

    def set_target(self, host: str, port: int) -> None:
        self._target = (host, port)
        if self._mode is None:
            self._open.set()

    def cut(self, mode: CutMode = "drop") -> None:
        """Cut the link: ``"drop"`` holds every byte, ``"reject"`` resets connections."""
        if mode not in ("drop", "reject"):
            raise ValueError(f"mode must be 'drop' or 'reject', not {mode!r}")
        if self._open.is_set():
            self._open = anyio.Event()
        self._mode = mode
        if mode == "reject":
            for stream in self._streams:
                _reset(stream)
            for scope in list(self._live):
                scope.cancel()
        log.info("proxy :%s cut (%s)", self._port_or_none(), mode)

    def heal(self) -> None:
        """Restore the link; bytes held by a ``"drop"`` flow on."""
        self._mode = None
        if self._target is not None:
            self._open.set()
        log.info("proxy :%s healed", self._port_or_none())

    def _port_or_none(self) -> int | None:
        return self.port if self._listener is not None else None

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[TcpProxy]:
        listener = await anyio.create_tcp_listener(
            local_host="127.0.0.1", local_port=self._requested_port, reuse_port=False
        )
        self._listener = listener
        try:
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, self._handle)
                yield self
                tg.cancel_scope.cancel()
        finally:
            self._listener = None

    # ------------------------------------------------------------------ relaying

    async def _handle(self, client: SocketStream) -> None:
        self.accepted += 1
        scope = anyio.CancelScope()
        self._live.add(scope)
        self._streams.add(client)
        try:
            with scope:
                await self._relay(client)
        except Exception:  # one connection's failure must not stop the proxy
            log.exception("proxy :%s connection failed", self._port_or_none())
        finally:
            self._live.discard(scope)
            self._streams.discard(client)
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await client.aclose()

    async def _relay(self, client: SocketStream) -> None:
        if self._mode == "reject":
            _reset(client)
            return
        await self._open.wait()
        assert self._target is not None
        try:
            with anyio.fail_after(_CONNECT_TIMEOUT):
                upstream = await anyio.connect_tcp(*self._target)
        except (OSError, TimeoutError):
            _reset(client)  # what a peer would see from a closed port
            return
        self._streams.add(upstream)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, client, upstream, tg.cancel_scope)
                tg.start_soon(self._pump, upstream, client, tg.cancel_scope)
        finally:
            self._streams.discard(upstream)
            with anyio.CancelScope(shield=True):
                await upstream.aclose()

    async def _pump(
        self, src: SocketStream, dst: SocketStream, both: anyio.CancelScope
    ) -> None:
        """Copy ``src`` to ``dst`` while the link is up; half-close ``dst`` at EOF."""
        try:
            while True:
                try:
                    data = await src.receive(_CHUNK)
                except anyio.EndOfStream:
                    with contextlib.suppress(OSError, anyio.BrokenResourceError):
                        await dst.send_eof()
                    return
                await self._open.wait()
                await dst.send(data)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            both.cancel()
