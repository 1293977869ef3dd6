"""RoomEvent, the one shape in which room events reach features, its parser, and
the power levels that say whose events count.

The homeserver hands us JSON objects; anything that does not have the shape of
a room event (missing ids, wrong types) is refused here, once, so that no
feature has to check the envelope again.

An event counts only if its sender had the level for its type under the power
levels in force *at the event's place in the timeline* (the homeserver's own
rule), never the room's current ones: :class:`PowerLevels` follows the levels
through a timeline, :func:`power_levels_before` looks them up before a
``/messages`` token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import MatrixError

if TYPE_CHECKING:
    from .client import Client

__all__ = [
    "CREATE",
    "POWER_LEVELS",
    "PowerLevels",
    "RoomEvent",
    "parse_event",
    "power_level_allows",
    "power_levels_before",
    "room_creators",
    "judge_state",
]

log = logging.getLogger(__name__)

POWER_LEVELS = "m.room.power_levels"
CREATE = "m.room.create"
#: ``m.room.power_levels`` events that ``judge_state`` lists at most.
_PAST_LEVELS = 100


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
    return RoomEvent(
        room_id=room_id,
        event_id=event_id,
        sender=sender,
        type=etype,
        content=content,
        origin_server_ts=ts,
        state_key=state_key,
        txn_id=txn_id if isinstance(txn_id, str) else None,
    )


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return default
    return default


_PRE_HYDRA_VERSIONS = frozenset(str(v) for v in range(1, 12))


def room_creators(create: RoomEvent | None) -> frozenset[str]:
    """Users with unlimited power in the room, by the ``m.room.create`` event.

    From room version 12 on, the creator (the create event's sender) and the
    ``additional_creators`` outrank every power level and must not appear in
    ``users``. In earlier versions creators have only their listed level.
    """
    if create is None:
        return frozenset()
    version = create.content.get("room_version", "1")
    if not isinstance(version, str) or version in _PRE_HYDRA_VERSIONS:
        return frozenset()
    extra = create.content.get("additional_creators")
    others = [u for u in extra if isinstance(u, str)] if isinstance(extra, list) else []
    return frozenset([create.sender, *others])


def power_level_allows(
    power_levels: dict[str, Any] | None,
    sender: str,
    event_type: str,
    *,
    state: bool,
    creators: frozenset[str] = frozenset(),
) -> bool:
    """Would ``m.room.power_levels`` content let ``sender`` send ``event_type``?

    Follows the Matrix authorization rules for the levels themselves: the
    sender's level (``users`` or ``users_default``) against the event's
    required level (``events`` or ``state_default``/``events_default``). With
    no power levels known, the spec's defaults apply (state needs 50, anyone
    may send timeline events).
    """
    if sender in creators:
        return True
    pl = power_levels or {}
    users = pl.get("users") if isinstance(pl.get("users"), dict) else {}
    events = pl.get("events") if isinstance(pl.get("events"), dict) else {}
    assert isinstance(users, dict) and isinstance(events, dict)
    user_level = _int(users.get(sender), _int(pl.get("users_default"), 0))
    if event_type in events:
        needed = _int(events[event_type], 0)
    elif state:
        needed = _int(pl.get("state_default"), 50 if power_levels is not None else 0)
    else:
        needed = _int(pl.get("events_default"), 0)
    return user_level >= needed


class PowerLevels(msgspec.Struct, frozen=True):
    """The power levels in force at one place of a room's timeline.

    Walk the timeline forwards with ``levels = levels.after(ev)``; judge each
    event with ``levels.allows(ev)`` before taking it into account.
    """

    #: ``m.room.power_levels`` content (None: the room has none, spec defaults).
    content: dict[str, Any] | None = None
    creators: frozenset[str] = frozenset()

    def after(self, ev: RoomEvent) -> PowerLevels:
        """The levels in force after ``ev``: these, unless ``ev`` sets new ones."""
        if ev.state_key == "":
            if ev.type == POWER_LEVELS:
                return msgspec.structs.replace(self, content=ev.content)
            if ev.type == CREATE:
                return msgspec.structs.replace(self, creators=room_creators(ev))
        return self

    def allows(self, ev: RoomEvent) -> bool:
        """Could ``ev``'s sender send it where these levels are in force?"""
        return power_level_allows(self.content, ev.sender, ev.type, state=ev.is_state,
                                  creators=self.creators)


async def power_levels_before(
    client: Client, room_id: str, token: str | None
) -> dict[str, Any] | None:
    """The ``m.room.power_levels`` content in force just before ``token`` (a
    ``/messages`` token), with one backward request; the room's current levels
    when none is visible before it or ``token`` is None."""
    if token is not None:
        page = await client.messages(room_id, token, direction="b", limit=1,
                                     types=[POWER_LEVELS])
        for ev in page.events:
            if ev.state_key == "":
                return ev.content
    return await client.get_state(room_id, POWER_LEVELS)


async def judge_state(
    client: Client, room_id: str, events: Iterable[RoomEvent], creators: frozenset[str]
) -> list[RoomEvent]:
    """The state events among ``events`` (from the room's current state) whose
    senders had the level for them where they stand in the timeline.

    The room's levels rarely change: an event that every ``m.room.power_levels``
    the room has had (one request lists them) allows, or none does, is judged
    at once; only the others are looked up where they stand (two requests each).
    """
    states = [ev for ev in events if ev.is_state]
    if not states:
        return []
    past: list[dict[str, Any] | None] | None = [await client.get_state(room_id, POWER_LEVELS)]
    token: str | None = None
    while past is not None:
        page = await client.messages(room_id, token, direction="b", limit=_PAST_LEVELS,
                                     types=[POWER_LEVELS])
        past.extend(ev.content for ev in page.events if ev.state_key == "")
        if not page.events or page.end is None or page.end == token:
            break
        if len(past) > _PAST_LEVELS:
            past = None  # too many to list: look every event up instead
        token = page.end
    out = []
    for ev in states:
        verdicts = {True, False} if past is None else {
            power_level_allows(pl, ev.sender, ev.type, state=True, creators=creators)
            for pl in past
        }
        if len(verdicts) == 1:
            allowed = verdicts.pop()
        else:
            try:
                after = await client.context_token(room_id, ev.event_id)
            except MatrixError as exc:  # not visible to us: judge by the current levels
                log.debug("cannot place %s in the timeline: %s", ev.event_id, exc)
                after = None
            # The event itself does not set levels: those before it are those after it.
            pl = await power_levels_before(client, room_id, after)
            allowed = power_level_allows(pl, ev.sender, ev.type, state=True, creators=creators)
        if allowed:
            out.append(ev)
        else:
            log.warning("ignoring %s %r of %s in %s: no power level for it where it stands",
                        ev.type, ev.state_key, ev.sender, room_id)
    return out
