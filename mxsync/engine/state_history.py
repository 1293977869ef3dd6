"""The newest *valid* version of a state event: walking a state's history.

Owns the rule that no single state event can lock a reader out (PROTOCOL §1.7):
when the current ``(type, state_key)`` state of a room is malformed, hostile,
or from a sender without the level for it, a reader takes the newest earlier
version that passes, found by following ``unsigned.replaces_state`` (each event
names the state event it replaced; one ``/context`` request per step).

Invariants:

1. The walk starts at the event it is given and goes strictly backwards, each
   event visited once (a loop in ``replaces_state`` ends it), at most
   ``limit`` events in all: a hostile writer who piles up more garbage than
   that pushes the valid version out of reach, and the reader falls back to its
   documented default rather than scanning without bound.
2. An event that cannot be fetched (not visible, gone, an error after the
   engine's retries) ends the walk as "not found"; it never raises.
3. ``accept`` decides validity; it may await (to judge power levels) and must
   not raise for bad content (it returns None).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ..errors import MatrixError
from .events import RoomEvent
from .surface import Engine

__all__ = ["MAX_STATE_STEPS", "state_versions", "newest_valid"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How many versions of one state a reader looks at before it gives up.
MAX_STATE_STEPS = 16


async def state_versions(
    engine: Engine, room_id: str, current: RoomEvent, *, limit: int = MAX_STATE_STEPS
) -> AsyncIterator[RoomEvent]:
    """``current``, then the state events it replaced, newest first (invariant 1)."""
    seen: set[str] = set()
    ev: RoomEvent | None = current
    while ev is not None and len(seen) < limit and ev.event_id not in seen:
        if ev.type != current.type or ev.state_key != current.state_key:
            log.warning("state history of %s %r in %s leads to %s %r: stopping",
                        current.type, current.state_key, room_id, ev.type, ev.state_key)
            return
        seen.add(ev.event_id)
        yield ev
        prev = ev.replaces_state
        if prev is None:
            return
        try:
            ev, _ = await engine.context(room_id, prev)
        except MatrixError as exc:  # invariant 2
            log.warning("cannot fetch %s, the state %s %r replaced in %s: %s",
                        prev, current.type, current.state_key, room_id, exc)
            return


async def newest_valid(
    engine: Engine,
    room_id: str,
    current: RoomEvent,
    accept: Callable[[RoomEvent], Awaitable[T | None]],
    *,
    limit: int = MAX_STATE_STEPS,
) -> tuple[RoomEvent, T] | None:
    """The newest version of ``current``'s state that ``accept`` turns into a value,
    with that value; None when none of the ``limit`` newest does."""
    skipped = 0
    async for ev in state_versions(engine, room_id, current, limit=limit):
        value = await accept(ev)
        if value is not None:
            if skipped:
                log.warning("%s %r in %s: skipped %d invalid newer version(s), using %s",
                            current.type, current.state_key, room_id, skipped, ev.event_id)
            return ev, value
        skipped += 1
    log.warning("%s %r in %s: no valid version among the %d newest", current.type,
                current.state_key, room_id, skipped)
    return None
