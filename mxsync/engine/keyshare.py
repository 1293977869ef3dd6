"""Late joiners' keys: asking a session's sender for it, and answering such asks.

Owns the key-request half of end-to-end encryption (MSC3061's idea, done with
Matrix's own messages), beside :mod:`~mxsync.engine.crypto`, which owns the Olm
machine and the encrypt/decrypt steps and calls in here:

- :meth:`KeyShare.want` notes a megolm event whose session key is missing;
  :meth:`KeyShare.ask` sends ``m.room_key_request`` to the session sender's
  devices, once per session per run;
- :meth:`KeyShare.take_request` queues the key requests of a /sync answer,
  :meth:`KeyShare.answer_requests` answers them after the answer was delivered;
- :meth:`KeyShare.wait_for_keys` lets a history page wait, once per session and
  at most ``key_wait`` seconds, for the keys it lacks;
- :meth:`KeyShare.accept_forward` is the rule for forwarded keys received.

Invariants:
- A session is forwarded (``m.forwarded_room_key`` over Olm, exported from the
  first index held) only when this device created it, only to a device of a
  user joined to the room now, and only when the room's
  ``m.room.history_visibility`` is ``shared`` or ``world_readable``: what Matrix
  already lets that member read. The same device is answered for the same
  session at most every ``_ANSWER_AGAIN`` seconds.
- A forwarded key is accepted only for a session this client asked for, with an
  empty forwarding chain, from the session's own device: the same trust as the
  original ``m.room_key``.
- Nothing here raises into the sync loop: failures are logged and the request
  is asked (or answered) again later.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import anyio
from nio import AsyncClient, ErrorResponse
from nio.crypto.key_request import OutgoingKeyRequest
from nio.events import MegolmEvent

from ..errors import TransientError
from ..protocol.types import ENCRYPTED
from .events import RoomEvent

__all__ = ["KeyShare", "MEGOLM", "nio_call"]

log = logging.getLogger("mxsync.crypto")

MEGOLM = "m.megolm.v1.aes-sha2"
KEY_REQUEST = "m.room_key_request"
HISTORY_VISIBILITY = "m.room.history_visibility"
#: History visibilities under which a member may read what was sent before it joined.
_SHARED_HISTORY = ("shared", "world_readable")
#: Incoming key requests kept per sync answer (the rest are dropped, logged).
_MAX_KEY_REQUESTS = 200
#: Seconds before the same device is answered again for the same session.
_ANSWER_AGAIN = 30.0


async def nio_call(what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """One nio request; its failures as TransientError (the callers retry)."""
    try:
        resp = await fn()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TransientError(f"{what}: {exc!r}") from None
    if isinstance(resp, ErrorResponse):
        raise TransientError(f"{what}: {resp.status_code} {resp.message}")
    return resp


class KeyShare:
    """Key requests out and in, for the Olm machine of one client.

    ``encrypted_rooms`` is the crypto layer's set of encrypted rooms (read
    only); ``members_checked(room_id)`` tells it when this module refreshed a
    room's members; ``member_refresh`` is how long a history visibility read
    stays good.
    """

    def __init__(self, nio: AsyncClient, encrypted_rooms: set[str],
                 members_checked: Callable[[str], None], *, key_wait: float,
                 member_refresh: float) -> None:
        self._nio = nio
        self._encrypted = encrypted_rooms
        self._members_checked = members_checked
        self.key_wait = key_wait
        self.member_refresh = member_refresh
        #: session id -> an event of it, to ask its sender for the key.
        self._wanted: dict[str, MegolmEvent] = {}
        #: session ids asked for (this run), and when.
        self._asked: dict[str, float] = {}
        #: session ids a history page already waited for (waits once).
        self._waited: set[str] = set()
        #: key requests received in the last sync answer, answered after it.
        self._requests_in: list[dict[str, Any]] = []
        #: (user, device, session) -> when answered.
        self._answered: dict[tuple[str, str, str], float] = {}
        self._visibility: dict[str, tuple[str, float]] = {}
        self.keys_requested = self.keys_forwarded = self.key_requests_refused = 0
        #: Set (and replaced) after each sync answer that carried to-device messages.
        self._to_device_seen = anyio.Event()

    # -- asking ----------------------------------------------------------------

    def want(self, megolm: MegolmEvent) -> None:
        """Note a session whose key is missing (asked at the next :meth:`ask`)."""
        if megolm.session_id not in self._asked and megolm.sender != self._nio.user_id:
            self._wanted.setdefault(megolm.session_id, megolm)

    async def ask(self) -> None:
        """Send a key request for every session noted and not asked yet."""
        olm = self._nio.olm
        if olm is None:
            return
        while self._wanted:
            # Taken before the await: the sync loop and a history page may both ask.
            session_id, megolm = self._wanted.popitem()
            self._asked[session_id] = time.monotonic()
            assert self._nio.user_id and self._nio.device_id
            # request_id = session id: nio looks forwarded keys up by it.
            msg = megolm.as_key_request(megolm.sender, self._nio.device_id)
            attempt = f"mxkr.{session_id[:24]}.{self._nio.device_id}"
            request = OutgoingKeyRequest.from_message(msg)
            olm.outgoing_key_requests[request.request_id] = request
            try:
                if megolm.sender not in olm.device_store.users:
                    # The answer is accepted only from a device we know.
                    olm.users_for_key_query.add(megolm.sender)
                    await nio_call("keys query", self._nio.keys_query)
                await nio_call("key request", functools.partial(
                    self._nio.to_device, msg, attempt))
            except TransientError:
                del self._asked[session_id]
                self._wanted[session_id] = megolm  # asked again after the next sync
                raise
            olm.store.add_outgoing_key_request(request)
            self.keys_requested += 1
            log.info("crypto: asked %s for the key of session %s in %s", megolm.sender,
                     session_id, megolm.room_id)

    def to_device_arrived(self) -> None:
        """A sync answer carried to-device messages: wake the pages waiting."""
        seen, self._to_device_seen = self._to_device_seen, anyio.Event()
        seen.set()

    async def wait_for_keys(self, room_id: str, events: Iterable[RoomEvent]) -> None:
        """Ask for the keys ``events`` lack and wait up to ``key_wait`` seconds
        for them (once per session: a session waited for is not waited for again)."""
        olm = self._nio.olm
        if olm is None or self.key_wait <= 0:
            return
        missing = {}
        for ev in events:
            if ev.type != ENCRYPTED:
                continue
            megolm = megolm_quiet(room_id, ev)
            if (megolm is not None and megolm.session_id not in self._waited
                    and megolm.sender != self._nio.user_id
                    and olm.inbound_group_store.get(room_id, megolm.sender_key,
                                                    megolm.session_id) is None):
                missing[megolm.session_id] = megolm
        if not missing:
            return
        for megolm in missing.values():
            self.want(megolm)
            self._waited.add(megolm.session_id)
        try:
            await self.ask()
        except TransientError as exc:
            log.warning("crypto: key request not sent: %s", exc)
        with anyio.move_on_after(self.key_wait):
            while any(olm.inbound_group_store.get(room_id, m.sender_key, m.session_id)
                      is None for m in missing.values()):
                await self._to_device_seen.wait()

    # -- answering -------------------------------------------------------------

    def take_request(self, raw: dict[str, Any]) -> None:
        """Queue a to-device message of a sync answer if it is a key request."""
        content = raw.get("content")
        if raw.get("type") != KEY_REQUEST or not isinstance(content, dict) or content.get(
                "action") != "request":
            return
        if len(self._requests_in) < _MAX_KEY_REQUESTS:
            self._requests_in.append(raw)
        else:
            log.warning("crypto: too many key requests in one sync; dropped one")

    async def answer_requests(self) -> None:
        """Answer the requests queued by :meth:`take_request`; never raises."""
        requests, self._requests_in = self._requests_in, []
        for raw in requests:
            try:
                await self._answer(raw)
            except TransientError as exc:
                log.warning("crypto: key request from %s not answered: %s", raw.get("sender"), exc)
            except Exception:  # a hostile request must not stop the loop
                log.exception("crypto: key request from %s not answered", raw.get("sender"))
        olm = self._nio.olm
        if olm is not None:  # nio queues them too and only serves our own devices
            olm.received_key_requests.clear()

    async def _answer(self, raw: dict[str, Any]) -> None:
        """Forward one of our own sessions to a member's device that asked."""
        olm = self._nio.olm
        assert olm is not None
        content = _dict(raw.get("content"))
        body = _dict(content.get("body"))
        requester, device_id = raw.get("sender"), content.get("requesting_device_id")
        room_id, session_id = body.get("room_id"), body.get("session_id")
        if not all(isinstance(v, str) for v in (requester, device_id, room_id, session_id)):
            return self._refuse(raw, "malformed")
        assert isinstance(requester, str) and isinstance(device_id, str)
        assert isinstance(room_id, str) and isinstance(session_id, str)
        if requester == self._nio.user_id:
            return None  # our own devices: nio's rules (verified devices only)
        own_key = olm.account.identity_keys["curve25519"]
        if body.get("algorithm") != MEGOLM or body.get("sender_key") != own_key:
            return None  # not a session of this device: its creator answers
        session = olm.inbound_group_store.get(room_id, own_key, session_id)
        if session is None or room_id not in self._encrypted:
            return self._refuse(raw, "no such session here")
        key = (requester, device_id, session_id)
        if time.monotonic() - self._answered.get(key, -_ANSWER_AGAIN) < _ANSWER_AGAIN:
            return None
        if await self._history_visibility(room_id) not in _SHARED_HISTORY:
            return self._refuse(raw, "the room's history is not shared with new members")
        room = self._nio.rooms.get(room_id)
        if room is None or requester not in room.users:
            await nio_call("joined members", lambda: self._nio.joined_members(room_id))
            self._members_checked(room_id)
            room = self._nio.rooms.get(room_id)
            if room is None or requester not in room.users:
                return self._refuse(raw, "not joined to the room")
        device = olm.device_store[requester].get(device_id)
        if device is None:
            olm.users_for_key_query.add(requester)
            await nio_call("keys query", self._nio.keys_query)
            device = olm.device_store[requester].get(device_id)
            if device is None:
                return self._refuse(raw, "unknown device")
        olm_session = olm.session_store.get(device.curve25519)
        if olm_session is None:
            await nio_call("keys claim", lambda: self._nio.keys_claim({requester: [device_id]}))
            olm_session = olm.session_store.get(device.curve25519)
            if olm_session is None:
                return self._refuse(raw, "no Olm session with the device")
        msg = olm._encrypt_forwarding_key(room_id, session, olm_session, device)
        txn = f"mxkf.{session_id[:24]}.{device.curve25519[:12]}"
        await nio_call("forward key", lambda: self._nio.to_device(msg, txn))
        self._answered[key] = time.monotonic()
        self.keys_forwarded += 1
        log.info("crypto: forwarded session %s of %s to %s/%s", session_id, room_id, requester,
                 device_id)
        return None

    def _refuse(self, raw: dict[str, Any], why: str) -> None:
        self.key_requests_refused += 1
        log.info("crypto: key request from %s refused: %s", raw.get("sender"), why)

    async def _history_visibility(self, room_id: str) -> str:
        cached = self._visibility.get(room_id)
        if cached is not None and time.monotonic() - cached[1] < self.member_refresh:
            return cached[0]
        resp = await self._nio.room_get_state_event(room_id, HISTORY_VISIBILITY)
        content = getattr(resp, "content", None)
        # No such state event: Matrix's default is "shared".
        value = content.get("history_visibility") if isinstance(content, dict) else None
        if value is None and isinstance(resp, ErrorResponse):
            if getattr(resp, "status_code", None) != "M_NOT_FOUND":
                raise TransientError(f"history visibility: {resp.message}")
            value = "shared"
        value = value if isinstance(value, str) else "joined"
        self._visibility[room_id] = (value, time.monotonic())
        return value

    # -- receiving forwarded keys ----------------------------------------------

    def accept_forward(self, sender: str, sender_key: str, event: Any) -> bool:
        """A forwarded key we asked for, from the device that created the session."""
        olm = self._nio.olm
        assert olm is not None
        content = _dict(getattr(event, "source", {}).get("content"))
        request = olm.outgoing_key_requests.get(getattr(event, "session_id", ""))
        if request is None or request.room_id != event.room_id or event.algorithm != MEGOLM:
            return False
        if content.get("sender_key") != sender_key or content.get(
                "forwarding_curve25519_key_chain"):
            return False
        device = olm.device_store.device_from_sender_key(sender, sender_key)
        return device is not None and device.user_id == sender


def megolm_quiet(room_id: str, ev: RoomEvent) -> MegolmEvent | None:
    """The megolm view of an encrypted event, or None (no log: decrypt logs)."""
    if ev.content.get("algorithm") != MEGOLM:
        return None
    megolm = MegolmEvent.from_dict({
        "type": ev.type, "content": ev.content, "event_id": ev.event_id, "sender": ev.sender,
        "origin_server_ts": ev.origin_server_ts, "room_id": room_id})
    return megolm if isinstance(megolm, MegolmEvent) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
