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
- An event whose session is missing is held (bounded per room, in memory; not
  in the first sync of a new store, which delivers nothing) and retried
  whenever keys arrive; bad ciphertext, replays and forgeries are skipped.
  Both are counted (:class:`CryptoStatistics`); nothing here raises into a loop.
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

import aiohttp
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

__all__ = ["Cleartext", "Crypto", "CryptoStatistics", "MEGOLM", "nio_config"]

log = logging.getLogger("mxsync.crypto")
_json = msgspec.json.Encoder()

MEGOLM = "m.megolm.v1.aes-sha2"
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


class Cleartext:
    """The hooks of :class:`Crypto` for a client without encryption: no-ops."""

    #: Types the sync filter adds for this layer.
    sync_types: tuple[str, ...] = ()

    async def receive_sync(self, resp: dict[str, Any]) -> None:
        return None

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
    ) -> None:
        self._nio = nio
        self._path = None if store_path is None else Path(f"{store_path}.olm")
        self._is_encrypted_state = is_encrypted
        self.member_refresh = member_refresh
        self._encrypted: set[str] = set()
        self._members_at: dict[str, float] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._held: dict[str, OrderedDict[str, MegolmEvent]] = {}
        self._upload_after = 0.0
        self.encrypted = self.decrypted = self.recovered = 0
        self.undecryptable = self.sessions_shared = 0

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

    async def upload_keys(self) -> None:
        """Upload device and one-time keys if the server lacks some; after a
        failure, not again for ``_UPLOAD_BACKOFF`` seconds (each sync asks)."""
        if not self._nio.should_upload_keys or time.monotonic() < self._upload_after:
            return
        try:
            await self._call("keys upload", self._nio.keys_upload)
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
            if not hold:
                return self._skip(megolm, "no key for its session")
            held = self._held.setdefault(room_id, OrderedDict())
            held[megolm.event_id] = megolm
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
                await self._call("joined members", lambda: nio.joined_members(room_id))
                self._members_at[room_id] = time.monotonic()
                if before is not None and set(room.users) != before:
                    # A newcomer must not read what was sent before it joined, nor
                    # one who left what is sent after: a new session.
                    nio.invalidate_outbound_session(room_id)
            if nio.should_query_keys:
                await self._call("keys query", nio.keys_query)
            if nio.olm.should_share_group_session(room_id):
                await self._call("share group session", lambda: nio.share_group_session(
                    room_id, ignore_unverified_devices=True))
                self.sessions_shared += 1

    @staticmethod
    async def _call(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """One nio request; its failures as TransientError (the callers retry)."""
        try:
            resp = await fn()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"{what}: {exc!r}") from None
        if isinstance(resp, ErrorResponse):
            raise TransientError(f"{what}: {resp.status_code} {resp.message}")
        return resp

    def statistics(self) -> CryptoStatistics:
        return CryptoStatistics(
            encrypted=self.encrypted, decrypted=self.decrypted,
            held=sum(len(h) for h in self._held.values()), recovered=self.recovered,
            undecryptable=self.undecryptable, sessions_shared=self.sessions_shared,
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
