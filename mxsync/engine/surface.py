"""What a feature may use of the engine: the one declared surface.

Features (documents, sensor streams) are written against :class:`Engine`, a
``typing.Protocol``, never against the engine's parts (Http, Store, Outbox,
SyncLoop). :class:`~mxsync.engine.connection.Connection` implements it; a unit
test can hand a feature a fake of it. The surface, by concern:

- identity: ``user_id``, ``device_id``;
- sending: ``send`` / ``send_many`` (through the outbox: persisted, then sent
  with a fixed transaction id), ``stage`` (outbox entries committed in the
  same SQLite transaction as the feature's own tables), ``next_slot`` (the
  pace the server allows), ``pending_sends`` (what of a lane is still in the
  outbox, a previous run's entries included), and ``request`` for the few one-shot calls a
  feature makes itself (MSC4140 delayed events), built by
  :mod:`mxsync.protocol.api`;
- the feature's own tables: ``run_sql``;
- receiving: ``room_events`` (live, from the one sync loop), ``wait_synced``;
- history: ``messages`` (one page), ``pages`` (every page until the server has
  no more), ``look_back`` (events newest first from now, bounded: how a
  feature that knows it is incomplete asks for more; paging backwards is what
  makes a homeserver backfill from the other servers of the room),
  ``context``, ``timestamp_to_event``;
- state: ``room_state``, ``state_event``, ``get_state``, ``may_send``,
  ``joined_members``;
- to-device (ephemeral, never a room event, not held to ``rc_message``):
  ``send_to_device`` (cleartext, bounded retries, may give up) and
  ``to_device_events`` (mxsync's cleartext to-device events, from the one
  sync loop; a full stream loses events rather than block the loop).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..protocol.api import Direction, Request
from .events import MessagesPage, RoomEvent
from .outbox import OutboxEntry, OutgoingEvent, SendHandle, Staging
from .todevice import ToDeviceEvent

__all__ = ["Engine"]

T = TypeVar("T")


class Engine(Protocol):
    """The engine as a feature sees it (implemented by ``Connection``)."""

    @property
    def user_id(self) -> str: ...

    @property
    def device_id(self) -> str | None: ...

    # -- sending ------------------------------------------------------------

    async def send(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        *,
        state_key: str | None = None,
        lane: str = "default",
    ) -> SendHandle: ...

    async def send_many(self, events: Sequence[OutgoingEvent]) -> list[SendHandle]: ...

    async def stage(self, fn: Callable[[Staging], T], *, hold: anyio.Event | None = None
                    ) -> tuple[T, list[SendHandle]]:
        """Run ``fn`` in one store transaction; the entries it adds to its
        :class:`Staging` are committed with it, then scheduled for sending, after
        ``hold`` is set (bounded by ``outbox.HOLD_MAX``) when one is given."""
        ...

    def new_entry(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any] | bytes,
        *,
        state_key: str | None = None,
        lane: str = "default",
    ) -> OutboxEntry:
        """An outbox entry with its transaction id fixed now (see ``stage``)."""
        ...

    def next_slot(self) -> float:
        """When (``time.monotonic()``) a send will probably be accepted."""
        ...

    def pending_sends(self, room_id: str, lane: str) -> list[SendHandle]:
        """Handles of the events of lane ``(room_id, lane)`` still in the outbox,
        in send order, also those a previous process left in the store (a
        feature that resumes after a crash waits for them)."""
        ...

    async def is_encrypted(self, room_id: str) -> bool:
        """Is ``room_id`` end-to-end encrypted (its timeline events encrypted)?"""
        ...

    async def content_budget(self, room_id: str) -> int:
        """JSON bytes one event's content may take in ``room_id`` (less when encrypted)."""
        ...

    async def request(self, req: Request) -> dict[str, Any]:
        """Send one request once (no retry): a feature's own endpoint."""
        ...

    # -- the feature's own tables ----------------------------------------------

    async def run_sql(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    # -- receiving --------------------------------------------------------------

    def room_events(
        self, room_id: str | None, types: Iterable[str] = (), *, buffer: int = 1024
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[RoomEvent]]: ...

    async def wait_synced(self) -> None: ...

    # -- history ------------------------------------------------------------------

    async def messages(
        self,
        room_id: str,
        from_token: str | None = None,
        *,
        direction: Direction = "b",
        limit: int = 1000,
        types: Iterable[str] | None = None,
    ) -> MessagesPage: ...

    def pages(
        self,
        room_id: str,
        from_token: str | None = None,
        *,
        direction: Direction = "b",
        limit: int = 1000,
        types: Iterable[str] | None = None,
    ) -> AsyncIterator[MessagesPage]: ...

    def look_back(
        self,
        room_id: str,
        types: Iterable[str],
        *,
        max_events: int = 10_000,
        limit: int = 250,
    ) -> AsyncIterator[RoomEvent]:
        """Events of ``types`` newest first from the room's end, at most
        ``max_events``, paging backwards (which triggers the server's backfill)."""
        ...

    async def context(
        self, room_id: str, event_id: str
    ) -> tuple[RoomEvent | None, str | None]: ...

    async def context_token(self, room_id: str, event_id: str) -> str | None: ...

    async def timestamp_to_event(
        self, room_id: str, ts_ms: int, direction: Direction = "f"
    ) -> tuple[str, int] | None: ...

    # -- state ----------------------------------------------------------------------

    async def room_state(self, room_id: str) -> list[RoomEvent]: ...

    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> RoomEvent | None: ...

    async def get_state(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None: ...

    async def may_send(
        self, room_id: str, sender: str, event_type: str, *, state: bool = False
    ) -> bool: ...

    async def joined_members(self, room_id: str) -> list[str]:
        """The user ids of the room's joined members now."""
        ...

    # -- to-device ------------------------------------------------------------------

    async def send_to_device(self, event_type: str,
                             messages: dict[str, dict[str, Any]]) -> bool:
        """One cleartext to-device message (``{user_id: {device_id or "*": content}}``);
        True once accepted, False if given up after bounded retries."""
        ...

    def to_device_events(
        self, types: Iterable[str], *, buffer: int = 256
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[ToDeviceEvent]]: ...
