"""The to-device side of one open document: peers, awareness and live updates together.

It owns the composition and the lifecycle of :class:`~mxsync.docs.peers.Peers`,
:class:`~mxsync.docs.awareness.AwarenessSync` and
:class:`~mxsync.docs.live.LiveUpdates` for one :class:`~mxsync.docs.doc.SyncedDoc`:
the one stream of to-device events it reads (``org.mxsync.doc.*``), the
dispatch of each message to its part, and the goodbye on close.

Invariants:
- Only messages about this document (room id and name) from a joined member's
  device other than this one are taken; malformed ones are skipped and logged,
  never raised into the reader.
- Closing sends ``bye`` once, bounded by ``_BYE_TIMEOUT`` seconds and shielded
  from the cancellation that closes the document.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Final

import anyio
import anyio.abc
import msgspec
import pycrdt
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from ..engine.surface import Engine
from ..engine.todevice import ToDeviceEvent
from ..errors import ProtocolError
from ..protocol import live as wire
from ..protocol.types import DOC_AWARENESS, DOC_LIVE
from .awareness import AwarenessSync
from .live import LiveUpdates
from .peers import Peers
from .replica import Replica

__all__ = ["Channel", "ChannelStatistics"]

log = logging.getLogger("mxsync.docs.channel")

_BYE_TIMEOUT: Final = 3.0


class ChannelStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a document's to-device channel since it was opened."""

    #: Devices that have the document open now (heard from within the timeout).
    peers: int
    #: Whether the room allows the channel (False: encrypted, timeline only).
    enabled: bool
    #: Awareness messages sent (coalesced updates; answers and goodbyes not counted).
    awareness_sent: int
    #: Awareness updates applied from peers.
    awareness_applied: int
    #: Live updates sent, and their bytes.
    live_sent: int
    live_bytes_sent: int
    #: Local batches not sent live (no peers, too many, too large).
    live_not_sent: int
    #: Live updates applied from peers.
    live_applied: int
    #: Received messages skipped (malformed, a stranger, refused by pycrdt, no power).
    skipped: int
    #: To-device sends that were refused or given up.
    send_failures: int


class Channel:
    """Awareness and live updates of one document over to-device (see the module)."""

    def __init__(
        self,
        client: Engine,
        replica: Replica,
        awareness: pycrdt.Awareness,
        room_id: str,
        name: str,
        *,
        live: bool = True,
        timeout: float = 30.0,
        rate: float = 5.0,
        max_devices: int = 8,
        persist: Callable[[], Awaitable[None]] | None = None,
        ready: Callable[[], bool] = lambda: True,
        loaded: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.room_id = room_id
        self.name = name
        self.peers = Peers(client, room_id, name, timeout=timeout, max_devices=max_devices)
        self.awareness = AwarenessSync(awareness, self.peers, rate=rate)
        self.live = LiveUpdates(replica, self.peers, send=live, persist=persist,
                                ready=ready)
        self._client = client
        #: Returns once the document is loaded: the ``hello`` waits for it.
        self._loaded = loaded
        self.skipped = 0

    async def start(self, stack: AsyncExitStack, tg: anyio.abc.TaskGroup) -> None:
        """Subscribe, observe, start the tasks in ``tg``; ``stack`` closes it all."""
        self.live.observe()
        stack.callback(self.live.close)
        stack.callback(self.awareness.close)
        await tg.start(self._reader)  # subscribed before the announcement goes out
        tg.start_soon(self.live.run)
        # The hello (the members' list, then a to-device send) goes out after the
        # load: peers' live updates are of no use before it, and the open's one
        # page of history then does not share the homeserver with it.
        tg.start_soon(self.awareness.run, tg, self._loaded)

    async def close(self) -> None:
        with anyio.move_on_after(_BYE_TIMEOUT, shield=True):
            await self.awareness.bye()

    async def _reader(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                      ) -> None:
        async with self._client.to_device_events((DOC_AWARENESS, DOC_LIVE)) as recv:
            task_status.started()
            await self._read(recv)

    async def _read(self, recv: MemoryObjectReceiveStream[ToDeviceEvent]) -> None:
        async for ev in recv:
            try:
                msg = wire.decode_message(ev.type, ev.content)
            except ProtocolError as exc:
                self.skipped += 1
                log.warning("skipping a to-device %s from %s: %s", ev.type, ev.sender, exc)
                continue
            if msg.room_id != self.room_id or msg.doc != self.name:
                continue  # another document's
            if self.peers.is_self(ev.sender, msg.device_id):
                continue
            if not await self.peers.is_member(ev.sender):
                self.skipped += 1
                self.peers.dropped_foreign += 1
                log.warning("skipping a to-device %s from %s, not a member of %s", ev.type,
                            ev.sender, self.room_id)
                continue
            if isinstance(msg, wire.LiveMessage):
                await self.live.receive(ev.sender, msg)
            else:
                await self.awareness.receive(ev.sender, msg)

    def statistics(self) -> ChannelStatistics:
        a, lv, p = self.awareness, self.live, self.peers
        return ChannelStatistics(
            peers=len(p.devices()), enabled=bool(p._allowed), awareness_sent=a.sent,
            awareness_applied=a.applied, live_sent=lv.sent, live_bytes_sent=lv.bytes_sent,
            live_not_sent=lv.not_sent, live_applied=lv.applied,
            skipped=self.skipped + a.skipped + lv.skipped, send_failures=p.send_failures,
        )
