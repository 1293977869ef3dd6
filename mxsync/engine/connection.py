"""Connection: one Matrix account, one nio AsyncClient, one store, one sync loop, one outbox.

``async with Connection(...)`` logs in (with the password if one is given, else
with the session kept in the store; the device id kept there either way, so that
transaction ids stay valid across restarts), starts the sync loop and
the outbox in its task group, and stops both on exit. It owns those parts;
features never see them: they use the :class:`~mxsync.engine.surface.Engine`
surface this class implements. The Client users see
(:class:`mxsync.client.Client`) is this plus the features. How it logs in
(which token, which device id, the session kept in the store) is
:mod:`mxsync.engine.session`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream
from nio import AsyncClient, AsyncClientConfig

from ..errors import ConfigError, MatrixError, RateLimitedError, TransientError
from ..protocol import api
from ..protocol.types import (
    CREATE,
    ENCRYPTED,
    ENCRYPTION,
    MAX_CONTENT_BYTES,
    MAX_ENCRYPTED_CONTENT_BYTES,
    POWER_LEVELS,
    room_power_levels,
)
from .authz import power_level_allows, room_creators
from .crypto import HELD_NS, MEGOLM, Crypto, CryptoStatistics, nio_config
from .events import MessagesPage, RoomEvent, parse_event, parse_events, parse_page
from .http import Backoff, Http, retrying
from .outbox import Outbox, OutboxEntry, OutgoingEvent, SendHandle, Staging
from .pages import paginate
from .session import check_user_id, log_in, save_session
from .store import Store
from .sync import Status, SyncLoop
from .taskgroups import StackOwner
from .todevice import ToDevice, ToDeviceEvent, ToDeviceStatistics

__all__ = ["Connection"]

log = logging.getLogger("mxsync.client")
T = TypeVar("T")


class Connection(StackOwner):
    """A Matrix account that keeps mxsync data current (the engine; see ``Client``)."""

    def __init__(
        self,
        homeserver: str,
        user_id: str,
        *,
        password: str | None = None,
        access_token: str | None = None,
        store_path: str | Path | None = None,
        device_id: str | None = None,
        timeline_limit: int = 50,
        sync_timeout_ms: int = 30_000,
        sends_per_room: int = 8,
        request_timeout: float = 60.0,
        call_attempts: int = 5,
        encryption: bool = True,
        sync: bool = True,
    ) -> None:
        if not isinstance(homeserver, str) or not homeserver.startswith(("http://", "https://")):
            raise ConfigError(f"homeserver must be an http(s) URL, got {homeserver!r}")
        check_user_id(user_id)
        if password is None and access_token is None and store_path is None:
            raise ConfigError("give a password or an access_token (or a store with a session)")
        if not 1 <= timeline_limit <= 1000:
            raise ConfigError(f"timeline_limit must be within 1..1000, got {timeline_limit!r}")
        self.homeserver = homeserver.rstrip("/")
        self.user_id = user_id
        self._password = password
        self._access_token = access_token
        self._requested_device = device_id
        self.device_id: str | None = None
        self.store = Store(store_path)
        self.nio = AsyncClient(
            self.homeserver,
            user_id,
            config=nio_config() if encryption else
            AsyncClientConfig(store_sync_tokens=False, encryption_enabled=False),
        )
        self.http = Http(self.nio, request_timeout=request_timeout)
        #: nio's Olm machine and the encrypt/decrypt steps (None: cleartext only).
        self.crypto = None if not encryption else Crypto(
            self.nio, None if store_path is None else Path(store_path), self._room_encrypted
        )
        self.outbox = Outbox(self.http, self.store, per_room=sends_per_room, crypto=self.crypto)
        #: The to-device channel (its receiving is fed by the sync loop).
        self.to_device = ToDevice(self.http)
        self.sync = SyncLoop(self.http, self.store, timeline_limit=timeline_limit,
                             timeout_ms=sync_timeout_ms, crypto=self.crypto,
                             to_device=self.to_device)
        self._call_attempts = call_attempts
        #: False: no /sync loop; events come only through ``push_events`` (an
        #: application service: Synapse answers its /sync with a 500).
        self._syncing = bool(sync)
        self._state_loaded: set[str] = set()
        self._tg: TaskGroup | None = None

    def __repr__(self) -> str:  # never show credentials
        return f"<{type(self).__name__} {self.user_id} on {self.homeserver}>"

    # -- lifecycle -----------------------------------------------------------

    async def _setup(self, stack: AsyncExitStack) -> None:
        await self.store.open()
        stack.push_async_callback(self._shielded, self.store.close)
        self.nio.client_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None)
        )
        stack.push_async_callback(self._shielded, self.nio.close)
        await self._login()
        if self.crypto is not None:
            self.crypto.open()
            self.crypto.load_held(await self.store.kv_items(HELD_NS))
            try:  # each sync tries again: a server without E2EE still syncs
                await self.crypto.upload_keys()
            except TransientError as exc:
                log.warning("could not upload device keys yet: %s", exc)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        self._tg = tg
        await tg.start(self.outbox.run)
        if self._syncing:
            await tg.start(self.sync.run)

    async def _closing(self, exc_type: type[BaseException] | None) -> None:
        self._tg = None

    @staticmethod
    async def _shielded(fn: Any) -> None:
        # Cleanup must finish even when the client is torn down by cancellation.
        with anyio.CancelScope(shield=True):
            await fn()

    @property
    def task_group(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("the client is not running; use `async with Client(...)`")
        return self._tg

    @property
    def status(self) -> Status:
        """The sync loop's state: connecting, synced or backing_off, with the last error."""
        return self.sync.status

    async def wait_synced(self) -> None:
        """Return once the first /sync has been processed (at once without a sync loop)."""
        if self._syncing:
            await self.sync.wait_synced()

    # -- session -------------------------------------------------------------

    async def _call(self, req: api.Request) -> dict[str, Any]:
        """A request that waits for an answer: bounded retries on transient errors."""
        return await self._retrying(lambda: self.http.call(req), req.what)

    async def _retrying(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        return await retrying(
            fn,
            homeserver=self.homeserver,
            attempts=self._call_attempts,
            backoff=Backoff(base=0.25, cap=4.0),
            what=what,
        )

    async def _login(self) -> None:
        session = await log_in(self.store, self.http, self._call, homeserver=self.homeserver,
                               user_id=self.user_id, password=self._password,
                               access_token=self._access_token,
                               device_id=self._requested_device)
        self._adopt(session.access_token, session.device_id)
        await save_session(self.store, session)

    def _adopt(self, token: str, device_id: str) -> None:
        self.http.access_token = token
        self.device_id = device_id
        self.nio.access_token = token
        self.nio.user_id = self.user_id
        self.nio.device_id = device_id

    # -- rooms -----------------------------------------------------------------

    async def create_room(
        self,
        name: str | None = None,
        invite: Iterable[str] = (),
        writers: Iterable[str] | None = None,
        *,
        topic: str | None = None,
        encrypted: bool = False,
    ) -> str:
        """Create a room where only ``writers`` may send mxsync's event types.

        ``writers`` defaults to the creator and the invitees; invitees that are not
        writers can read (a dashboard) but the server refuses their mxsync events.
        ``encrypted`` makes it end-to-end encrypted (megolm) from its first event:
        timeline events are then encrypted, state events stay cleartext.
        """
        if encrypted and self.crypto is None:
            raise ConfigError("encrypted=True needs a client with encryption=True")
        invite = list(invite)
        for uid in invite:
            check_user_id(uid)
        writer_list = list(invite) if writers is None else list(writers)
        for uid in writer_list:
            check_user_id(uid)
        # The creator is left out of ``users``: from room version 12 on creators
        # outrank every level and Synapse refuses them there; before that,
        # Synapse gives the creator 100 by itself.
        users = {uid: 50 for uid in writer_list if uid != self.user_id}
        body: dict[str, Any] = {
            "preset": "private_chat",
            "invite": invite,
            "power_level_content_override": room_power_levels(users),
        }
        if name is not None:
            body["name"] = name
        if topic is not None:
            body["topic"] = topic
        if encrypted:
            body["initial_state"] = [
                {"type": ENCRYPTION, "state_key": "", "content": {"algorithm": MEGOLM}}
            ]
        answer = await self._call(api.create_room(body))
        room_id = answer.get("room_id")
        if not isinstance(room_id, str):
            raise MatrixError(200, "M_UNKNOWN", "createRoom answered without a room_id")
        if encrypted and self.crypto is not None:
            # Before the sync loop has seen it: no event may leave in cleartext.
            self.crypto.mark_encrypted(room_id)
        return room_id

    async def _room_encrypted(self, room_id: str) -> bool:
        try:
            return await self.state_event(room_id, ENCRYPTION) is not None
        except RateLimitedError:
            raise
        except MatrixError as exc:
            # A definite refusal (not joined, no such room): a send there fails as well.
            log.debug("no state of %s (%s): taken as cleartext", room_id, exc)
            return False

    async def is_encrypted(self, room_id: str) -> bool:
        """Is ``room_id`` end-to-end encrypted (its timeline events encrypted)?"""
        return self.crypto is not None and await self.crypto.is_encrypted(room_id)

    async def content_budget(self, room_id: str) -> int:
        """How many JSON bytes one event's content may take in ``room_id``: less
        in an encrypted room, where the megolm envelope must fit the limit."""
        if await self.is_encrypted(room_id):
            return MAX_ENCRYPTED_CONTENT_BYTES
        return MAX_CONTENT_BYTES

    def crypto_statistics(self) -> CryptoStatistics | None:
        """What the encryption layer has done (None for a cleartext-only client)."""
        return None if self.crypto is None else self.crypto.statistics()

    async def join(self, room_id: str, via: Iterable[str] = ()) -> str:
        """Join a room by id or alias; returns the room id.

        ``via``: server names to join through, for a room of another homeserver
        that this one is not in yet (an invite makes it unnecessary).
        """
        servers = [via] if isinstance(via, str) else list(via)
        answer = await self._call(api.join(room_id, servers))
        joined = answer.get("room_id")
        return joined if isinstance(joined, str) else room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        check_user_id(user_id)
        await self._call(api.invite(room_id, user_id))

    async def set_power_level(self, room_id: str, user_id: str, level: int) -> None:
        """Set one user's power level (for example to make a reader a writer)."""
        pl = await self.get_state(room_id, POWER_LEVELS) or {}
        users = dict(pl.get("users") or {})
        users[user_id] = level
        pl = {**pl, "users": users}
        await self._call(api.put_state(room_id, POWER_LEVELS, "", pl))

    # -- sending ---------------------------------------------------------------

    async def send(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        *,
        state_key: str | None = None,
        lane: str = "default",
    ) -> SendHandle:
        """Persist an event in the outbox; it is sent in the background.

        Returns once the event is committed to the store; ``await handle.wait()``
        returns its event id once the homeserver has it.
        """
        return await self.outbox.enqueue(
            OutgoingEvent(room_id, event_type, content, state_key, lane)
        )

    async def send_many(self, events: Sequence[OutgoingEvent]) -> list[SendHandle]:
        """Persist several events in one transaction (order kept per lane)."""
        return await self.outbox.enqueue_many(events)

    def pending_sends(self, room_id: str, lane: str) -> list[SendHandle]:
        """Handles of the events of lane ``(room_id, lane)`` still in the outbox
        (a previous run's included), in send order."""
        return self.outbox.pending_in_lane(room_id, lane)

    def new_entry(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any] | bytes,
        *,
        state_key: str | None = None,
        lane: str = "default",
    ) -> OutboxEntry:
        """An outbox entry with its transaction id fixed now, for :meth:`stage`."""
        return OutboxEntry.new(room_id, event_type, content, state_key=state_key, lane=lane)

    async def stage(self, fn: Callable[[Staging], T], *, hold: anyio.Event | None = None
                    ) -> tuple[T, list[SendHandle]]:
        """Run ``fn`` in one store transaction; what it adds to its ``Staging`` is
        committed with the feature's own writes, then sent (after ``hold``, bounded:
        see :meth:`Outbox.stage <mxsync.engine.outbox.Outbox.stage>`)."""
        return await self.outbox.stage(fn, hold=hold)

    def next_slot(self) -> float:
        """When (``time.monotonic()``) a send will probably be accepted (a hint)."""
        return self.outbox.next_slot()

    async def request(self, req: api.Request) -> dict[str, Any]:
        """Send ``req`` once; transient failures raise ``TransientError``."""
        return await self.http.call(req)

    async def send_to_device(self, event_type: str,
                             messages: dict[str, dict[str, Any]]) -> bool:
        """Send one to-device message to the devices ``messages`` names
        (``{user_id: {device_id or "*": content}}``), in cleartext. Bounded
        retries; True once accepted, False if given up (the message is lost)."""
        return await self.to_device.send(event_type, messages)

    def to_device_statistics(self) -> ToDeviceStatistics:
        return self.to_device.statistics()

    async def joined_members(self, room_id: str) -> list[str]:
        """The room's joined members now (one request, bounded retries)."""
        answer = await self._call(api.joined_members(room_id))
        joined = answer.get("joined")
        return sorted(joined) if isinstance(joined, dict) else []

    async def run_sql(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` over the store's connection in one committed transaction."""
        return await self.store.run(fn)

    # -- receiving -------------------------------------------------------------

    @asynccontextmanager
    async def room_events(
        self, room_id: str | None, types: Iterable[str] = (), *, buffer: int = 1024
    ) -> AsyncIterator[MemoryObjectReceiveStream[RoomEvent]]:
        """Live events of ``room_id`` whose type starts with one of ``types``."""
        async with self.sync.subscribe(room_id, types, buffer=buffer) as recv:
            yield recv

    async def push_events(self, events: Iterable[RoomEvent]) -> int:
        """Deliver ``events`` received another way than /sync (an application
        service's pushed transactions) to the consumers, as the sync loop
        would (:meth:`SyncLoop.push`); how many were new."""
        return await self.sync.push(events)

    @asynccontextmanager
    async def to_device_events(
        self, types: Iterable[str], *, buffer: int = 256
    ) -> AsyncIterator[MemoryObjectReceiveStream[ToDeviceEvent]]:
        """Cleartext to-device events of mxsync's types starting with one of
        ``types``, from now on (a full stream loses events, never blocks)."""
        async with self.to_device.subscribe(types, buffer=buffer) as recv:
            yield recv

    async def messages(
        self,
        room_id: str,
        from_token: str | None = None,
        *,
        direction: api.Direction = "b",
        limit: int = 1000,
        types: Iterable[str] | None = None,
    ) -> MessagesPage:
        """One page of room history (``direction`` "b" backwards or "f" forwards)."""
        if direction not in ("b", "f"):
            raise ConfigError(f"direction must be 'b' or 'f', got {direction!r}")
        wanted = None if types is None else list(types)
        req = api.room_messages(room_id, from_token, direction, limit, types=_wire_types(wanted))
        page = parse_page(room_id, await self._call(req))
        if self.crypto is None:
            return page
        # Missing keys: asks their senders and waits a little (late joiners).
        return await self.crypto.decrypt_page_waiting(room_id, page, types=wanted)

    def pages(
        self,
        room_id: str,
        from_token: str | None = None,
        *,
        direction: api.Direction = "b",
        limit: int = 1000,
        types: Iterable[str] | None = None,
    ) -> AsyncIterator[MessagesPage]:
        """Every page of room history from ``from_token`` until the server has no
        more (:func:`~mxsync.engine.pages.paginate`); ``break`` to stop sooner."""
        types = None if types is None else list(types)
        return paginate(
            lambda t: self.messages(room_id, t, direction=direction, limit=limit, types=types),
            from_token,
        )

    async def look_back(
        self,
        room_id: str,
        types: Iterable[str],
        *,
        max_events: int = 10_000,
        limit: int = 250,
    ) -> AsyncIterator[RoomEvent]:
        """Events of ``types`` newest first from the room's end, at most ``max_events``.

        For a feature that knows it misses events (a document waiting for
        updates it depends on, a sequence hole): paging backwards is what makes
        the homeserver backfill the room from other servers (DESIGN: a room is
        a graph). ``break`` once the hole is filled.
        """
        count = 0
        async for page in self.pages(room_id, None, direction="b", limit=limit, types=types):
            for ev in page.events:
                yield ev
                count += 1
                if count >= max_events:
                    return

    async def context(self, room_id: str, event_id: str) -> tuple[RoomEvent | None, str | None]:
        """The event ``event_id`` and a pagination token just after it (for paging
        forwards from it); None for what the answer lacks or has malformed."""
        answer = await self._call(api.room_context(room_id, event_id))
        end = answer.get("end")
        ev = parse_event(room_id, answer.get("event"))
        if ev is not None and self.crypto is not None:
            ev = next(iter(self.crypto.decrypt(room_id, [ev], hold=False)), None)
        return ev, end if isinstance(end, str) else None

    async def context_token(self, room_id: str, event_id: str) -> str | None:
        """A pagination token just after ``event_id`` (for paging forwards from it)."""
        return (await self.context(room_id, event_id))[1]

    async def timestamp_to_event(
        self, room_id: str, ts_ms: int, direction: api.Direction = "f"
    ) -> tuple[str, int] | None:
        """The event closest to ``ts_ms`` in ``direction``, or None if there is none."""
        try:
            answer = await self._call(api.timestamp_to_event(room_id, ts_ms, direction))
        except MatrixError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        event_id, ts = answer.get("event_id"), answer.get("origin_server_ts")
        if isinstance(event_id, str) and isinstance(ts, int):
            return event_id, ts
        return None

    async def room_state(self, room_id: str) -> list[RoomEvent]:
        """The room's current state events, fetched from the homeserver."""
        req = api.room_state(room_id)
        answer = await self._retrying(lambda: self.http.call_list(req), req.what)
        events = parse_events(room_id, answer)
        cache = self.sync.state.setdefault(room_id, {})
        for ev in events:
            if ev.state_key is not None:
                # What the sync loop delivered meanwhile is at least as new.
                cache.setdefault((ev.type, ev.state_key), ev)
        self._state_loaded.add(room_id)
        return events

    async def state_event(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> RoomEvent | None:
        """One current state event (from the sync cache, fetched once per room
        unless a sync handed the room's full state for that type)."""
        if room_id not in self._state_loaded and not self.sync.holds_state(room_id, event_type):
            await self.room_state(room_id)
        return self.sync.state.get(room_id, {}).get((event_type, state_key))

    async def get_state(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        """One state event's content, or None."""
        ev = await self.state_event(room_id, event_type, state_key)
        return None if ev is None else ev.content

    async def may_send(
        self, room_id: str, sender: str, event_type: str, *, state: bool = False
    ) -> bool:
        """Do the room's power levels let ``sender`` send ``event_type``?"""
        pl = await self.get_state(room_id, POWER_LEVELS)
        creators = room_creators(await self.state_event(room_id, CREATE))
        return power_level_allows(pl, sender, event_type, state=state, creators=creators)


def _wire_types(types: list[str] | None) -> list[str] | None:
    """A /messages type filter that also lets encrypted events through (the
    type inside is known only after decryption, which filters again)."""
    return types + [ENCRYPTED] if types else types
