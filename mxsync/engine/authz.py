"""Whose events count: the power levels in force at an event's place.

The one module that owns this rule for documents and streams alike
(PROTOCOL.md 1.3). An event counts only if its sender had the level for its
type under the power levels in force *at the event's place in the timeline*
(the homeserver's own rule), never the room's current ones:

- :func:`power_level_allows` and :func:`room_creators` are the rule itself, pure;
- :class:`PowerLevels` follows the levels through a timeline read forwards;
- :func:`power_levels_before` looks them up just before a ``/messages`` token;
- :func:`levels_backwards` gives them for each event of a page read backwards;
- :func:`judge_state` filters state events from the room's current state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from ..errors import MatrixError
from ..protocol.types import CREATE, POWER_LEVELS
from .events import MessagesPage, RoomEvent
from .surface import Engine

__all__ = [
    "PowerLevels",
    "judge_state",
    "levels_backwards",
    "levels_for",
    "power_level_allows",
    "power_levels_before",
    "room_creators",
]

log = logging.getLogger("mxsync.authz")

#: ``m.room.power_levels`` events that ``judge_state`` lists at most.
_PAST_LEVELS = 100


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
    have, needed = levels_for(power_levels, sender, event_type, state=state)
    return have >= needed


def levels_for(
    power_levels: dict[str, Any] | None, sender: str, event_type: str, *, state: bool
) -> tuple[int, int]:
    """``(sender's level, level event_type needs)`` under ``m.room.power_levels``
    content (creators aside: see :func:`power_level_allows`)."""
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
    return user_level, needed


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
    engine: Engine, room_id: str, token: str | None
) -> dict[str, Any] | None:
    """The ``m.room.power_levels`` content in force just before ``token`` (a
    ``/messages`` token), with one backward request; the room's current levels
    when none is visible before it or ``token`` is None."""
    if token is not None:
        page = await engine.messages(room_id, token, direction="b", limit=1,
                                     types=[POWER_LEVELS])
        for ev in page.events:
            if ev.state_key == "":
                return ev.content
    return await engine.get_state(room_id, POWER_LEVELS)


async def judge_state(
    engine: Engine, room_id: str, events: Iterable[RoomEvent], creators: frozenset[str]
) -> list[RoomEvent]:
    """The state events among ``events`` (from the room's current state) whose
    senders had the level for them where they stand in the timeline.

    A creator's event (room version 12 on: creators outrank every level, and
    the create event never changes) is taken without a request. The room's
    levels rarely change: an event that every ``m.room.power_levels`` the room
    has had (one request lists them, two when the server gives a next token)
    allows, or none does, is judged at once; only the others are looked up
    where they stand (two requests each).
    """
    states = [ev for ev in events if ev.is_state]
    if all(ev.sender in creators for ev in states):
        return states
    levels: list[dict[str, Any] | None] = [await engine.get_state(room_id, POWER_LEVELS)]
    past: list[dict[str, Any] | None] | None = levels
    async for page in engine.pages(room_id, None, direction="b", limit=_PAST_LEVELS,
                                   types=[POWER_LEVELS]):
        levels.extend(ev.content for ev in page.events if ev.state_key == "")
        if len(levels) > _PAST_LEVELS:
            past = None  # too many to list: look every event up instead
            break
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
                after = await engine.context_token(room_id, ev.event_id)
            except MatrixError as exc:  # not visible to us: judge by the current levels
                log.debug("cannot place %s in the timeline: %s", ev.event_id, exc)
                after = None
            # The event itself does not set levels: those before it are those after it.
            pl = await power_levels_before(engine, room_id, after)
            allowed = power_level_allows(pl, ev.sender, ev.type, state=True, creators=creators)
        if allowed:
            out.append(ev)
        else:
            log.warning("ignoring %s %r of %s in %s: no power level for it where it stands",
                        ev.type, ev.state_key, ev.sender, room_id)
    return out


async def levels_backwards(
    engine: Engine, room_id: str, page: MessagesPage, creators: frozenset[str]
) -> list[PowerLevels]:
    """The power levels in force at each event of ``page``, a page of
    ``m.room.power_levels`` and other events read backwards (newest first)."""
    levels = [PowerLevels(None, creators)] * len(page.events)
    if not page.events:
        return levels
    oldest = page.events[-1]
    if oldest.type == POWER_LEVELS and oldest.state_key == "":
        now = PowerLevels(oldest.content, creators)  # only the events after it need levels
    else:
        now = PowerLevels(await power_levels_before(engine, room_id, page.end), creators)
    for i in range(len(page.events) - 1, -1, -1):
        levels[i] = now
        now = now.after(page.events[i])
    return levels
