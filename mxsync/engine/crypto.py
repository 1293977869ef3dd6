"""End-to-end encryption: nio's Olm machine, its store, and the encrypt/decrypt steps.

mxsync writes no cryptography: device keys, one-time keys, device-list tracking,
megolm sessions (creation, rotation, sharing over to-device) are matrix-nio's
(vodozemac). This module owns that machine and hooks it into the engine at
three places only: :meth:`Crypto.receive_sync` (the sync loop hands it every
/sync answer first), :meth:`Crypto.decrypt` (before any event is parsed into a
feature's hands: sync timeline, gap pages, history pages) and
:meth:`Crypto.send_request` (the outbox asks it for the request of each send).

Invariants:
- The Olm account and sessions live in ``<store>.olm`` next to the client's
  store (mode 0600), so a restarted client (same store, same device id) keeps
  its identity and decrypts what it could before; with ``store_path=None``
  they live in memory and die with the client.
- Timeline events of an encrypted room leave encrypted; state events never do
  (Matrix does not encrypt state). A retry re-encrypts (a new megolm index)
  under the same transaction id, so the homeserver still deduplicates.
- Before encrypting, the room's members are known (``/joined_members``,
  refreshed when device lists change and at least every ``member_refresh``
  seconds), their device keys queried and the outbound session shared with
  every device. Unverified devices are trusted on first use
  (``ignore_unverified_devices``): no interactive verification.
- A decrypted event counts only if its plaintext names this room, and, when
  the sender's device keys are known, its session came from that device.
  Its inner type must be in mxsync's namespace (as the cleartext filter).
- Membership events come in /sync (the filter adds ``m.room.member``: Synapse
  reports a newcomer's device list only when its join is in the filtered
  answer) and stop here; a join or leave makes the next send refresh the
  members and start a new session.
- An event whose session is missing is held (bounded per room; not in the
  first sync of a new store, which delivers nothing) and retried whenever keys
  arrive. Held events are written to the client's store in the same
  transaction as the sync position that moved past them (:meth:`held_rows`),
  and loaded again at start (:meth:`load_held`), so a restart before the key
  arrives loses none; bad ciphertext, replays and forgeries are skipped.
  Both are counted (:class:`CryptoStatistics`); nothing here raises into a loop.
- Late joiners: a client missing a session's key asks the session's sender
  for it and a sender answers members that may read the room's history;
  the rules are :mod:`~mxsync.engine.keyshare`'s (:class:`KeyShare`, held by
  this module as ``keys``). A history page with such events waits up to
  ``key_wait`` seconds, once per session, for the answer before skipping them.
- A homeserver without E2EE does not stop a client: the key upload is retried,
  30 s apart, and rooms without ``m.room.encryption`` stay cleartext.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
from nio import AsyncClient, AsyncClientConfig, ErrorResponse
from nio.crypto import OlmDevice
from nio.events import MegolmEvent
from nio.exceptions import EncryptionError
from nio.responses import SyncResponse
from nio.rooms import MatrixRoom
from nio.store import SqliteMemoryStore, SqliteStore

from ..errors import HomeserverUnavailable, TransientError
from ..protocol import api
from ..protocol.types import ENCRYPTED, ENCRYPTION, MEMBER, NAMESPACE
from .events import MessagesPage, RoomEvent, parse_event
from .keyshare import MEGOLM, KeyShare, nio_call

__all__ = ["HELD_NS", "Cleartext", "Crypto", "CryptoStatistics", "MEGOLM", "nio_config"]

log = logging.getLogger("mxsync.crypto")
_json = msgspec.json.Encoder()

#: The store's kv namespace of held events: key "<room id> <event id>", value
#: the encrypted event's JSON.
HELD_NS = "crypto.held"
#: Events held per room while their session's key has not arrived.
_MAX_HELD = 1_000
#: Seconds between key uploads after one failed.
_UPLOAD_BACKOFF = 30.0


def nio_config() -> AsyncClientConfig:
    """nio's configuration: encryption on, its own sync-token store off, and a
    bounded number of retries so that a dead server surfaces as an error."""
    return AsyncClientConfig(store_sync_tokens=False, encryption_enabled=True,
                             store=SqliteStore, max_timeouts=2)


class CryptoStatistics(msgspec.Struct, frozen=True):
    """What the encryption layer has done since the client started."""

    #: Timeline events sent encrypted.
    encrypted: int
    #: Encrypted events decrypted (a history page read twice counts twice).
    decrypted: int
    #: Events held for a missing session key, now.
    held: int
    #: Held events decrypted once their key arrived.
    recovered: int
    #: Events skipped for good: no key (history, or the hold overflowed), bad
    #: ciphertext, a replay, a wrong room or device, a foreign inner type.
    undecryptable: int
    #: Megolm sessions shared with the room's devices (each rotation counts).
    sessions_shared: int
    #: Sessions whose key this client asked their sender for (late joiner).
    keys_requested: int = 0
    #: Own sessions forwarded to a member's device that asked for them.
    keys_forwarded: int = 0
    #: Key requests refused (not a member, history not shared, not our session).
    key_requests_refused: int = 0


class Cleartext:
    """The hooks of :class:`Crypto` for a client without encryption: no-ops."""

    #: Types the sync filter adds for this layer.
    sync_types: tuple[str, ...] = ()

    async def receive_sync(self, resp: dict[str, Any]) -> None:
        return None

    async def after_sync(self) -> None:
        return None

    def held_rows(self) -> list[tuple[str, bytes]] | None:
        return None

    def held_written(self) -> None:
        return None

    def recoverable_rooms(self) -> list[str]:
        return []

    async def decrypt_page_waiting(self, room_id: str, page: MessagesPage, *,
                                   types: Sequence[str] | None = None) -> MessagesPage:
        return page

    def decrypt(
        self, room_id: str, events: list[RoomEvent], *, hold: bool = True
    ) -> list[RoomEvent]:
        return events

    def decrypt_page(self, room_id: str, page: MessagesPage, *, hold: bool) -> MessagesPage:
        return page


class Crypto:
    """nio's Olm machine and the engine's encrypt/decrypt steps."""

    #: Membership events in /sync: Synapse reports the device lists of newcomers
    #: only when their join is in the (filtered) sync answer, and a join or leave
    #: must start a new session. They go no further than :meth:`decrypt`.
    sync_types: tuple[str, ...] = (MEMBER,)

    def __init__(
        self,
        nio: AsyncClient,
        store_path: Path | None,
        is_encrypted: Callable[[str], Awaitable[bool]],
        *,
        member_refresh: float = 60.0,
        key_wait: float = 10.0,
    ) -> None:
        self._nio = nio
        self._path = None if store_path is None else Path(f"{store_path}.olm")
        self._is_encrypted_state = is_encrypted
        self.member_refresh = member_refresh
        self._encrypted: set[str] = set()
        self._members_at: dict[str, float] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._held: dict[str, OrderedDict[str, MegolmEvent]] = {}
        #: The held events changed since :meth:`held_rows` last gave them out.
        self._held_dirty = False
        self._upload_after = 0.0
        self.encrypted = self.decrypted = self.recovered = 0
        self.undecryptable = self.sessions_shared = 0
        self.keys = KeyShare(nio, self._encrypted, self._members_checked,
                             key_wait=key_wait, member_refresh=member_refresh)

    # -- the account -----------------------------------------------------------

    def open(self) -> None:
        """Load (or create) the Olm account of the logged-in device."""
        nio = self._nio
        if self._path is None:
            nio.config = dataclasses.replace(nio.config, store=SqliteMemoryStore)
        else:
            # Created 0600 before SQLite opens it: the keys are never world-readable.
            os.close(os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self._path, 0o600)
            nio.store_path = str(self._path.parent)
            nio.config = dataclasses.replace(nio.config, store_name=self._path.name)
        nio.load_store()
        assert nio.olm is not None
        self._encrypted |= set(nio.encrypted_rooms)
        # nio takes forwarded keys only from the user's own verified devices;
        # mxsync also takes a session from the device that created it (see the
        # module docstring). Instance attribute: only this machine changes.
        olm = nio.olm
        own_rule = olm._should_accept_forward
        olm._should_accept_forward = (  # type: ignore[method-assign]
            lambda sender, sender_key, event: self.keys.accept_forward(sender, sender_key, event)
            or own_rule(sender, sender_key, event))

    async def upload_keys(self) -> None:
        """Upload device and one-time keys if the server lacks some; after a
        failure, not again for ``_UPLOAD_BACKOFF`` seconds (each sync asks)."""
        if not self._nio.should_upload_keys or time.monotonic() < self._upload_after:
            return
        try:
            await nio_call("keys upload", self._nio.keys_upload)
        except TransientError:
            self._upload_after = time.monotonic() + _UPLOAD_BACKOFF
            raise

    @property
    def identity_keys(self) -> dict[str, str]:
        assert self._nio.olm is not None
        return dict(self._nio.olm.account.identity_keys)

    # -- receiving -------------------------------------------------------------

    async def receive_sync(self, resp: dict[str, Any]) -> None:
        """Feed nio what its crypto needs from one /sync answer: to-device
        messages (room keys), device-list changes, one-time key counts, and
        which rooms are encrypted. Called before the rooms are delivered."""
        try:
            parsed = SyncResponse.from_dict(self._reduce(resp))
            if isinstance(parsed, ErrorResponse):
                log.warning("crypto: unreadable sync parts: %s", parsed)
                return
            await self._nio.receive_response(parsed)
        except Exception:  # nio's parsing and Olm: a bad to-device message must not stop the loop
            log.exception("crypto: nio could not take this sync answer")
        if _list(_dict(resp.get("to_device")).get("events")):
            self.keys.to_device_arrived()  # wakes history pages waiting for forwarded keys
        try:
            await self.upload_keys()
        except TransientError as exc:
            log.warning("crypto: key upload failed, retried later: %s", exc)

    def _reduce(self, resp: dict[str, Any]) -> dict[str, Any]:
        """The parts of a /sync answer nio's crypto takes; notes encrypted rooms
        and membership changes on the way."""
        rooms: dict[str, Any] = {}
        joined = _dict(_dict(resp.get("rooms")).get("join"))
        for room_id, room in joined.items():
            room = _dict(room)
            raws = [r for part in ("state", "timeline")
                    for r in _list(_dict(room.get(part)).get("events")) if isinstance(r, dict)]
            if any(r.get("type") == MEMBER for r in raws):
                self._members_at.pop(room_id, None)  # someone joined or left
            enc = [r for r in raws if r.get("type") == ENCRYPTION]
            if enc:
                self.mark_encrypted(room_id)
                rooms[room_id] = {"state": {"events": enc},
                                  "timeline": {"events": [], "limited": False}}
        for raw in _list(_dict(resp.get("to_device")).get("events")):
            if isinstance(raw, dict):
                self.keys.take_request(raw)
        lists = _dict(resp.get("device_lists"))
        if lists.get("changed") or lists.get("left"):
            self._members_at.clear()  # someone joined, left or changed devices
        return {
            "next_batch": str(resp.get("next_batch", "")),
            "rooms": {"join": rooms},
            "to_device": _dict(resp.get("to_device")) or {"events": []},
            "device_lists": lists,
            "device_one_time_keys_count": _dict(resp.get("device_one_time_keys_count")),
        }

    def decrypt(
        self, room_id: str, events: list[RoomEvent], *, hold: bool = True,
        types: Sequence[str] | None = None,
    ) -> list[RoomEvent]:
        """``events`` with encrypted ones decrypted, held ones whose key has
        arrived first; undecryptable ones left out (held when ``hold``).
        ``types``: the history filter, applied to what was decrypted."""
        held = self._held.get(room_id)
        if not held and not any(ev.type in (ENCRYPTED, MEMBER) for ev in events):
            return events
        out = self._recover(room_id) if hold else []
        for ev in events:
            if ev.type != ENCRYPTED:
                if ev.type != MEMBER:
                    out.append(ev)
                continue
            megolm = _megolm(room_id, ev)
            if megolm is None:
                self.undecryptable += 1
                continue
            clear = self._decrypt_one(room_id, megolm, hold=hold)
            if clear is not None and (not types or _matches(clear.type, types)):
                out.append(clear)
        return out

    def decrypt_page(
        self, room_id: str, page: MessagesPage, *, hold: bool, types: Sequence[str] | None = None
    ) -> MessagesPage:
        before = self.undecryptable
        events = self.decrypt(room_id, page.events, hold=hold, types=types)
        if events is page.events:
            return page
        return MessagesPage(events, page.start, page.end, self.undecryptable - before)

    def _recover(self, room_id: str) -> list[RoomEvent]:
        held = self._held.get(room_id)
        store = self._nio.olm.inbound_group_store if self._nio.olm else None
        out: list[RoomEvent] = []
        if not held or store is None:
            return out
        for event_id, megolm in list(held.items()):
            if store.get(room_id, megolm.sender_key, megolm.session_id) is None:
                continue
            del held[event_id]
            self._held_dirty = True
            clear = self._decrypt_one(room_id, megolm, hold=False)
            if clear is not None:
                self.recovered += 1
                out.append(clear)
        return out

    def _decrypt_one(self, room_id: str, megolm: MegolmEvent, *, hold: bool) -> RoomEvent | None:
        olm = self._nio.olm
        if olm is None:
            return self._skip(megolm, "this client has no Olm machine")
        if olm.inbound_group_store.get(room_id, megolm.sender_key, megolm.session_id) is None:
            self.keys.want(megolm)
            if not hold:
                return self._skip(megolm, "no key for its session")
            held = self._held.setdefault(room_id, OrderedDict())
            held[megolm.event_id] = megolm
            self._held_dirty = True
            if len(held) > _MAX_HELD:
                self._skip(held.popitem(last=False)[1], "held too long without a key")
            return None
        try:
            clear = olm.decrypt_megolm_event(megolm, room_id)
        except EncryptionError as exc:
            return self._skip(megolm, str(exc))
        source = getattr(clear, "source", None)
        if not isinstance(source, dict) or source.get("room_id") != room_id:
            return self._skip(megolm, "its plaintext is for another room")
        device = olm.device_store[megolm.sender].get(megolm.device_id or "")
        if isinstance(device, OlmDevice) and device.curve25519 != megolm.sender_key:
            return self._skip(megolm, "its session is not from the sender's device")
        ev = parse_event(room_id, source)
        if ev is None or not ev.type.startswith(f"{NAMESPACE}."):
            return self._skip(megolm, "not an mxsync event")
        self.decrypted += 1
        return ev

    # -- held events in the client's store ------------------------------------

    def held_rows(self) -> list[tuple[str, bytes]] | None:
        """Every held event as (key, JSON) for :data:`HELD_NS`, or None when
        nothing changed since the last :meth:`held_written`. The sync loop
        writes them in the transaction that stores its position."""
        if not self._held_dirty:
            return None
        return [(f"{room_id} {event_id}", _json.encode(megolm.source))
                for room_id, held in self._held.items()
                for event_id, megolm in held.items()]

    def held_written(self) -> None:
        self._held_dirty = False

    def load_held(self, rows: dict[str, bytes]) -> None:
        """Held events saved by a previous run (the store's :data:`HELD_NS`)."""
        for key, value in rows.items():
            room_id, _, event_id = key.partition(" ")
            try:
                raw = msgspec.json.decode(value)
            except msgspec.DecodeError:
                log.warning("crypto: dropping an unreadable held event %s", key)
                continue
            ev = parse_event(room_id, raw)
            megolm = None if ev is None else _megolm(room_id, ev)
            if megolm is not None and megolm.event_id == event_id:
                self._held.setdefault(room_id, OrderedDict())[event_id] = megolm
                self.keys.want(megolm)

    # -- late joiners (engine/keyshare.py) -------------------------------------

    @property
    def key_wait(self) -> float:
        """Seconds a history page waits, once per session, for a missing key."""
        return self.keys.key_wait

    @key_wait.setter
    def key_wait(self, value: float) -> None:
        self.keys.key_wait = value

    def recoverable_rooms(self) -> list[str]:
        """Rooms holding events whose key has arrived since (the sync loop
        decrypts them even when the room has no news)."""
        olm = self._nio.olm
        if olm is None:
            return []
        store = olm.inbound_group_store
        return [room_id for room_id, held in self._held.items()
                if any(store.get(room_id, m.sender_key, m.session_id) is not None
                       for m in held.values())]

    async def after_sync(self) -> None:
        """Ask for the keys found missing, answer the requests received.
        Failures are logged and retried later (a request is asked again on the
        next event that needs it); nothing here raises into the loop."""
        try:
            await self.keys.ask()
        except TransientError as exc:
            log.warning("crypto: key request not sent, retried later: %s", exc)
        await self.keys.answer_requests()

    async def decrypt_page_waiting(self, room_id: str, page: MessagesPage, *,
                                   types: Sequence[str] | None = None) -> MessagesPage:
        """A history page decrypted; when it has events whose keys are
        missing, their senders are asked and this waits up to ``key_wait``
        seconds (once per session) for the keys to arrive first."""
        await self.keys.wait_for_keys(room_id, page.events)
        return self.decrypt_page(room_id, page, hold=False, types=types)

    def _skip(self, megolm: MegolmEvent, why: str) -> RoomEvent | None:
        self.undecryptable += 1
        log.warning("skipping encrypted event %s from %s: %s", megolm.event_id, megolm.sender,
                    why)
        return None

    # -- sending -----------------------------------------------------------------

    def mark_encrypted(self, room_id: str) -> None:
        """Once encrypted, a room stays encrypted (Matrix cannot turn it off)."""
        if room_id not in self._encrypted:
            self._encrypted.add(room_id)
            self._nio.encrypted_rooms.add(room_id)
            if self._nio.store is not None:
                self._nio.store.save_encrypted_rooms([room_id])
        room = self._nio.rooms.get(room_id)
        if room is None:
            self._nio.rooms[room_id] = MatrixRoom(room_id, self._nio.user_id, True)
        else:
            room.encrypted = True

    async def is_encrypted(self, room_id: str) -> bool:
        if room_id in self._encrypted:
            return True
        try:
            encrypted = await self._is_encrypted_state(room_id)
        except HomeserverUnavailable as exc:  # the outbox retries transient errors
            raise TransientError(str(exc)) from None
        if encrypted:
            self.mark_encrypted(room_id)
            return True
        return False

    async def send_request(self, room_id: str, event_type: str, txn_id: str,
                           content: bytes) -> api.Request | None:
        """The PUT /send of an encrypted timeline event, or None in a cleartext room."""
        if not await self.is_encrypted(room_id):
            return None
        await self._prepare(room_id)
        etype, enc = self._nio.encrypt(room_id, event_type, json.loads(content))
        self.encrypted += 1
        return api.send_event(room_id, etype, txn_id, _json.encode(enc))

    def _members_checked(self, room_id: str) -> None:
        self._members_at[room_id] = time.monotonic()

    async def _prepare(self, room_id: str) -> None:
        """Members known, their keys queried, the outbound session shared."""
        nio = self._nio
        assert nio.olm is not None
        async with self._locks.setdefault(room_id, anyio.Lock()):
            self.mark_encrypted(room_id)
            room = nio.rooms[room_id]
            seen = self._members_at.get(room_id)
            if seen is None or time.monotonic() - seen > self.member_refresh:
                before = set(room.users) if room.members_synced else None
                await nio_call("joined members", lambda: nio.joined_members(room_id))
                self._members_checked(room_id)
                if before is not None and set(room.users) != before:
                    # A newcomer must not read what was sent before it joined, nor
                    # one who left what is sent after: a new session.
                    nio.invalidate_outbound_session(room_id)
            if nio.should_query_keys:
                await nio_call("keys query", nio.keys_query)
            if nio.olm.should_share_group_session(room_id):
                await nio_call("share group session", lambda: nio.share_group_session(
                    room_id, ignore_unverified_devices=True))
                self.sessions_shared += 1

    def statistics(self) -> CryptoStatistics:
        return CryptoStatistics(
            encrypted=self.encrypted, decrypted=self.decrypted,
            held=sum(len(h) for h in self._held.values()), recovered=self.recovered,
            undecryptable=self.undecryptable, sessions_shared=self.sessions_shared,
            keys_requested=self.keys.keys_requested, keys_forwarded=self.keys.keys_forwarded,
            key_requests_refused=self.keys.key_requests_refused,
        )


def _megolm(room_id: str, ev: RoomEvent) -> MegolmEvent | None:
    raw: dict[str, Any] = {
        "type": ev.type, "content": ev.content, "event_id": ev.event_id, "sender": ev.sender,
        "origin_server_ts": ev.origin_server_ts, "room_id": room_id,
    }
    if ev.txn_id is not None:
        raw["unsigned"] = {"transaction_id": ev.txn_id}
    megolm = MegolmEvent.from_dict(raw)
    if not isinstance(megolm, MegolmEvent) or ev.content.get("algorithm") != MEGOLM:
        log.warning("skipping a malformed encrypted event %s in %s", ev.event_id, room_id)
        return None
    megolm.room_id = room_id
    return megolm


def _matches(event_type: str, types: Sequence[str]) -> bool:
    """Does ``event_type`` pass a Matrix type filter (``*`` is a wildcard)?"""
    return any(fnmatch.fnmatchcase(event_type, t) for t in types)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
