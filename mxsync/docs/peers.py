"""Peers: which devices have a document open, and the to-device fan-out to them.

It owns the peer table of one open document (``(user_id, device_id)`` -> when
last heard from), the room's joined members as last read (a to-device message
from anyone else is dropped: to-device messages can come from any Matrix user)
and whether the room allows the to-device channel at all (never in an
encrypted room: mxsync does not Olm-encrypt to-device messages, so nothing of
an encrypted room's document or presence leaves in cleartext; its replicas
use the timeline alone).

Invariants:
- A peer is a device that announced the document (``hello``), answered
  (``here``) or sent any message about it in the last ``timeout`` seconds;
  ``bye`` removes it at once. Announcements older than ``timeout`` by the
  sender's clock (queued while this device was offline) do not count.
- :meth:`Peers.send` addresses only peers, at most ``max_devices`` of them for
  live updates (:meth:`Peers.live_targets` is empty above: the timeline alone
  carries the updates) and ``max_awareness_devices`` for awareness.
  :meth:`Peers.announce` addresses every joined member's devices (``*``).
- Nothing here raises into the caller's loop: a failed send is counted and
  logged; the timeline remains the durable record.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import anyio

from ..engine.surface import Engine
from ..errors import MatrixError, MxsyncError
from ..protocol import live as wire
from ..protocol.types import ENCRYPTION

__all__ = ["Peers"]

log = logging.getLogger("mxsync.docs.peers")

#: How often the room's encryption and membership are looked at again (seconds).
_RECHECK: Final = 10.0
#: At most this many reads of the members a second for senders not known as members.
_MEMBER_REREAD: Final = 4.0


class Peers:
    """The peer table of one open document (see the module docstring)."""

    def __init__(
        self,
        client: Engine,
        room_id: str,
        name: str,
        *,
        timeout: float = 30.0,
        max_devices: int = 8,
        max_awareness_devices: int = 50,
    ) -> None:
        self.client = client
        self.room_id = room_id
        self.name = name
        self.timeout = timeout
        self.max_devices = max_devices
        self.max_awareness_devices = max_awareness_devices
        self._peers: dict[tuple[str, str], float] = {}
        self._members: frozenset[str] = frozenset()
        self._members_at = -float("inf")
        self._allowed: bool | None = None
        self._allowed_at = -float("inf")
        self.send_failures = 0
        self.sends = 0
        self.dropped_foreign = 0

    # -- what the room allows ---------------------------------------------------

    async def allowed(self) -> bool:
        """May this document use to-device at all (a cleartext room)?"""
        now = time.monotonic()
        if self._allowed is False:
            return False  # a room never stops being encrypted
        if self._allowed is None or now - self._allowed_at > _RECHECK:
            try:
                encrypted = (await self.client.is_encrypted(self.room_id)
                             or await self.client.get_state(self.room_id, ENCRYPTION) is not None)
            except MxsyncError as exc:
                log.debug("cannot tell whether %s is encrypted (%s)", self.room_id, exc)
                return bool(self._allowed)
            self._allowed, self._allowed_at = not encrypted, now
            if encrypted:
                log.info("%r in %s: an encrypted room, awareness and live updates stay off "
                         "to-device (timeline only)", self.name, self.room_id)
        return bool(self._allowed)

    async def is_member(self, user_id: str) -> bool:
        """Is ``user_id`` a joined member (re-read at most every few seconds)?"""
        if user_id in self._members:
            return True
        # A newcomer announces right after its join: read the members again, after
        # the message came (a stranger's messages: at most _MEMBER_REREAD reads a second).
        wait = self._members_at + 1 / _MEMBER_REREAD - time.monotonic()
        if wait > 0:
            await anyio.sleep(wait)
        await self._refresh_members()
        return user_id in self._members

    async def _refresh_members(self) -> None:
        self._members_at = time.monotonic()
        try:
            self._members = frozenset(await self.client.joined_members(self.room_id))
        except MxsyncError as exc:
            log.warning("%r in %s: cannot read the members: %s", self.name, self.room_id, exc)

    # -- the table ---------------------------------------------------------------

    def is_self(self, user_id: str, device_id: str) -> bool:
        return user_id == self.client.user_id and device_id == self.client.device_id

    def heard(self, user_id: str, device_id: str, ts_ms: int) -> None:
        """A message of this document came from that device."""
        if ts_ms and ts_ms < (time.time() - self.timeout) * 1000:
            return  # queued while we were away: not presence
        self._peers[(user_id, device_id)] = time.monotonic()

    def gone(self, user_id: str, device_id: str) -> None:
        self._peers.pop((user_id, device_id), None)

    def any(self) -> bool:
        """Is any peer known (cheap: may count one that just expired)?"""
        return bool(self._peers)

    def devices(self) -> list[tuple[str, str]]:
        """The peers heard from in the last ``timeout`` seconds."""
        horizon = time.monotonic() - self.timeout
        for key in [k for k, t in self._peers.items() if t < horizon]:
            del self._peers[key]
        return sorted(self._peers)

    def live_targets(self) -> list[tuple[str, str]]:
        """Where a live update goes: the peers, or none above ``max_devices``."""
        peers = self.devices()
        return peers if len(peers) <= self.max_devices else []

    # -- sending -------------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        return {"room_id": self.room_id, "doc": self.name,
                "device_id": self.client.device_id or "", "ts": int(time.time() * 1000)}

    def awareness_message(self, op: wire.Op, states: bytes) -> wire.AwarenessMessage:
        return wire.AwarenessMessage(op=op, awareness=states, **self._base())

    def live_message(self, update: bytes) -> wire.LiveMessage:
        return wire.LiveMessage(update=update, **self._base())

    async def announce(self, msg: wire.AwarenessMessage) -> bool:
        """Send ``msg`` to every device of every joined member (``hello``)."""
        if not await self.allowed():
            return False
        await self._refresh_members()
        etype, content = wire.encode_message(msg)
        return await self._send(etype, {u: {"*": content} for u in sorted(self._members)})

    async def send(self, msg: wire.Message,
                   to: list[tuple[str, str]] | None = None) -> bool:
        """Send ``msg`` to ``to`` (default: the peers, bounded as the module says)."""
        if not await self.allowed():
            return False
        if to is None:
            to = self.devices()
            if len(to) > self.max_awareness_devices:
                to = to[: self.max_awareness_devices]
        if not to:
            return True
        etype, content = wire.encode_message(msg)
        messages: dict[str, dict[str, Any]] = {}
        for user_id, device_id in to:
            messages.setdefault(user_id, {})[device_id] = content
        return await self._send(etype, messages)

    async def _send(self, etype: str, messages: dict[str, dict[str, Any]]) -> bool:
        try:
            ok = await self.client.send_to_device(etype, messages)
        except MatrixError as exc:
            ok = False
            log.warning("%r in %s: a to-device %s was refused: %s", self.name, self.room_id,
                        etype, exc)
        self.sends += 1
        if not ok:
            self.send_failures += 1
        return ok
