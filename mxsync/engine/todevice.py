"""To-device messages: sending them (bounded retries) and handing received ones to features.

To-device messages are Matrix's ephemeral channel from one device to others:
not part of any room, not held to ``rc_message`` (DESIGN: 60 at 10/s all
answered at once under Synapse's default limits, where room sends got 429s).
Features use them for what must be fast and may be lost (awareness, live
updates ahead of the timeline); whatever must last goes through the outbox.

Invariants:
- A send has one transaction id, fixed before its first attempt, kept by every
  retry: the homeserver delivers it once (``PUT /sendToDevice`` is idempotent
  per access token and txn id, like ``/send``).
- A send is bounded: a 429 is waited out as told (``retry_after_ms``, the same
  reading as :mod:`mxsync.engine.http`), transient errors back off with
  :class:`~mxsync.engine.http.Backoff`, on the client's Liveness, and after
  ``deadline`` seconds (or ``attempts`` transient failures) it gives up and
  says so (False) instead of raising: a late live message is worthless.
  While the client's Liveness knows the server to be unreachable, a send
  gives up at once, without a request (an outage must not cost a retry
  series per edit and cursor move). A definite refusal (4xx other than 429) is raised.
- Received messages reach consumers whose type prefixes match, in the order
  the server delivered them, without ever blocking the sync loop: a consumer
  whose bounded stream is full loses the message (counted, logged once per
  consumer). Cleartext to-device events of mxsync's namespace only; what
  nio's Olm machine takes (room keys, ``m.room.encrypted``) never comes here.
- A malformed event is skipped and logged.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import RateLimitedError, TransientError
from ..protocol import api
from ..protocol.types import NAMESPACE
from .fanout import registered
from .http import Backoff, Http

__all__ = ["ToDevice", "ToDeviceEvent", "ToDeviceStatistics"]

log = logging.getLogger("mxsync.todevice")


class ToDeviceEvent(msgspec.Struct, frozen=True):
    """One to-device event as /sync delivered it."""

    sender: str
    type: str
    content: dict[str, Any]


class ToDeviceStatistics(msgspec.Struct, frozen=True):
    """What the to-device channel has done since the client started."""

    #: Send requests answered 200 (each may address many devices).
    sent: int
    #: Device addresses of those requests (``*`` counts one per user).
    addressed: int
    #: Sends given up (deadline or attempts exhausted).
    dropped: int
    #: 429 answers waited out.
    rate_limited: int
    #: mxsync to-device events received.
    received: int
    #: Received events a full consumer lost.
    overflowed: int
    #: Received events skipped as malformed.
    malformed: int


@dataclass(eq=False)
class _Consumer:
    prefixes: tuple[str, ...]
    stream: MemoryObjectSendStream[ToDeviceEvent]
    warned: bool = False


class ToDevice:
    """The client's to-device channel (one per Connection)."""

    def __init__(self, http: Http, *, deadline: float = 10.0, attempts: int = 4) -> None:
        self._http = http
        self.deadline = deadline
        self.attempts = attempts
        self._consumers: list[_Consumer] = []
        self._txn_prefix = secrets.token_hex(6)
        self._txn_seq = 0
        self.sent = self.addressed = self.dropped = self.rate_limited = 0
        self.received = self.overflowed = self.malformed = 0

    # -- sending ---------------------------------------------------------------

    def _txn_id(self) -> str:
        self._txn_seq += 1
        return f"mxtd{self._txn_prefix}.{self._txn_seq}"

    async def send(self, event_type: str, messages: dict[str, dict[str, Any]]) -> bool:
        """Send ``messages`` (``{user_id: {device_id or "*": content}}``); True once
        the server accepted it, False if given up (see the module invariants)."""
        if not messages:
            return True
        req = api.send_to_device(event_type, self._txn_id(), messages)
        backoff = Backoff(base=0.2, cap=2.0)
        give_up = time.monotonic() + self.deadline
        failures = 0
        while True:
            if self._http.liveness.up is False:
                # Known unreachable: a lossy message is not worth a request (the
                # timeline carries what matters), and during an outage every edit
                # and cursor move would otherwise add its own retries.
                return self._drop(event_type, "the homeserver is unreachable")
            try:
                await self._http.call(req)
            except RateLimitedError as exc:
                self.rate_limited += 1
                delay = max(0.05, (exc.retry_after_ms or 1000) / 1000)
                if time.monotonic() + delay > give_up:
                    return self._drop(event_type, str(exc))
                await anyio.sleep(delay)
                continue
            except TransientError as exc:
                failures += 1
                delay = backoff.next_delay()
                if failures >= self.attempts or time.monotonic() + delay > give_up:
                    return self._drop(event_type, str(exc))
                await self._http.liveness.wait(delay)
                continue
            self.sent += 1
            self.addressed += sum(len(d) for d in messages.values())
            return True

    def _drop(self, event_type: str, why: str) -> bool:
        self.dropped += 1
        log.info("gave up a to-device %s: %s", event_type, why)
        return False

    # -- receiving -------------------------------------------------------------

    def subscribe(
        self, types: Iterable[str], *, buffer: int = 256
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[ToDeviceEvent]]:
        """Receive to-device events whose type starts with one of ``types``, from now on."""
        prefixes = tuple(types)
        return registered(self._consumers, lambda send: _Consumer(prefixes, send), buffer)

    def receive_sync(self, resp: dict[str, Any]) -> int:
        """Hand the mxsync events of one /sync answer's ``to_device`` to consumers;
        how many there were."""
        section = resp.get("to_device")
        raws = section.get("events") if isinstance(section, dict) else None
        if not isinstance(raws, list):
            return 0
        count = 0
        for raw in raws:
            if not isinstance(raw, dict):
                self.malformed += 1
                continue
            etype, sender, content = raw.get("type"), raw.get("sender"), raw.get("content")
            if not isinstance(etype, str) or not etype.startswith(f"{NAMESPACE}."):
                continue  # room keys, m.room.encrypted: nio's
            if not isinstance(sender, str) or not isinstance(content, dict):
                self.malformed += 1
                log.warning("skipping a malformed to-device %s", etype)
                continue
            self.received += 1
            count += 1
            ev = ToDeviceEvent(sender, etype, content)
            for consumer in list(self._consumers):
                if not etype.startswith(consumer.prefixes):
                    continue
                try:
                    consumer.stream.send_nowait(ev)
                except anyio.WouldBlock:
                    self.overflowed += 1
                    if not consumer.warned:
                        consumer.warned = True
                        log.warning("a to-device consumer is full: dropping %s", etype)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    if consumer in self._consumers:
                        self._consumers.remove(consumer)
        return count

    def statistics(self) -> ToDeviceStatistics:
        return ToDeviceStatistics(
            sent=self.sent, addressed=self.addressed, dropped=self.dropped,
            rate_limited=self.rate_limited, received=self.received,
            overflowed=self.overflowed, malformed=self.malformed,
        )
