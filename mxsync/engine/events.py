"""RoomEvent, the one shape in which room events reach features, its parser, and
MessagesPage, one page of room history in that shape.

The homeserver hands us JSON objects; anything that does not have the shape of
a room event (missing ids, wrong types) is refused here, once, so that no
feature has to check the envelope again. Whose events count (power levels) is
:mod:`mxsync.engine.authz`.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ..protocol.types import CREATE, POWER_LEVELS

__all__ = ["CREATE", "POWER_LEVELS", "MessagesPage", "RoomEvent", "parse_event", "parse_page"]

log = logging.getLogger(__name__)


class RoomEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A room event as delivered by /sync or /messages."""

    room_id: str
    event_id: str
    sender: str
    type: str
    content: dict[str, Any]
    origin_server_ts: int = 0
    #: Set for state events (possibly ``""``); None for timeline-only events.
    state_key: str | None = None
    #: ``unsigned.transaction_id``: the homeserver sets it only on events sent by
    #: this very device, so it marks our own echo (other devices of the same
    #: user see None).
    txn_id: str | None = None
    #: ``unsigned.replaces_state``: for a state event, the id of the state event it
    #: replaced (same type and state_key), so a reader can walk a state's history.
    replaces_state: str | None = None

    @property
    def is_state(self) -> bool:
        return self.state_key is not None


def parse_event(room_id: str, raw: Any) -> RoomEvent | None:
    """Build a RoomEvent from a raw event dict, or None if it is not one."""
    if not isinstance(raw, dict):
        return None
    event_id = raw.get("event_id")
    sender = raw.get("sender")
    etype = raw.get("type")
    content = raw.get("content")
    ts = raw.get("origin_server_ts", 0)
    state_key = raw.get("state_key")
    if not (isinstance(event_id, str) and isinstance(sender, str) and isinstance(etype, str)):
        return None
    if not isinstance(content, dict):
        # Redacted events keep an empty content; anything else is not an event.
        return None
    if not isinstance(ts, int) or isinstance(ts, bool):
        ts = 0
    if state_key is not None and not isinstance(state_key, str):
        return None
    unsigned = raw.get("unsigned")
    txn_id = unsigned.get("transaction_id") if isinstance(unsigned, dict) else None
    replaces = unsigned.get("replaces_state") if isinstance(unsigned, dict) else None
    return RoomEvent(
        room_id=room_id,
        event_id=event_id,
        sender=sender,
        type=etype,
        content=content,
        origin_server_ts=ts,
        state_key=state_key,
        txn_id=txn_id if isinstance(txn_id, str) else None,
        replaces_state=replaces if isinstance(replaces, str) and state_key is not None else None,
    )


def parse_events(room_id: str, raws: Any) -> list[RoomEvent]:
    """The room events among ``raws`` (a list from an answer); others are logged, skipped."""
    out = []
    for raw in raws if isinstance(raws, list) else []:
        ev = parse_event(room_id, raw)
        if ev is None:
            log.warning("skipping a malformed event in %s: %.200r", room_id, raw)
            continue
        out.append(ev)
    return out


class MessagesPage(msgspec.Struct, frozen=True):
    """One page of /messages: events in the requested direction, and the next token."""

    events: list[RoomEvent]
    start: str | None
    end: str | None
    #: Encrypted events of the page left out because they could not be decrypted
    #: (sent before this device joined, say): an empty page is not the end.
    undecryptable: int = 0


def parse_page(room_id: str, answer: dict[str, Any]) -> MessagesPage:
    """A /messages answer as a page; malformed events are skipped (and logged)."""
    start, end = answer.get("start"), answer.get("end")
    return MessagesPage(
        parse_events(room_id, answer.get("chunk")),
        start if isinstance(start, str) else None,
        end if isinstance(end, str) else None,
    )
