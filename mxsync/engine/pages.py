"""One way to walk /messages: an async iterator over pages with one stop rule.

Every reader of room history (the sync loop's gap fill, documents' loads,
history queries, power levels in the past) pages through here, and features
that know they miss events look back with :func:`look_back_retrying`. The rule:
the walk ends when the server gives no ``end`` token, or one that does not
move (the spec's "no further events"). An empty page *with* a new token goes
on: the server may have filtered out events we cannot see. Any other stop
(found an event, passed a time, enough events) is the caller's ``break``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Literal

import anyio

from ..errors import HomeserverUnavailable, MatrixError, TransientError
from .events import MessagesPage, RoomEvent
from .surface import Engine

__all__ = ["look_back_retrying", "paginate"]


async def paginate(
    fetch: Callable[[str | None], Awaitable[MessagesPage]], token: str | None
) -> AsyncIterator[MessagesPage]:
    """Yield ``fetch(token)``, then the page from each ``end`` until the rule says stop."""
    while True:
        page = await fetch(token)
        yield page
        if page.end is None or page.end == token:
            return
        token = page.end


async def look_back_retrying(
    engine: Engine,
    room_id: str,
    types: Iterable[str],
    *,
    delays: Iterable[float],
    max_events: int,
    visit: Callable[[RoomEvent], bool],
    done: Callable[[], bool],
    log: logging.Logger,
    what: str,
) -> Literal["found", "gone", "missing"]:
    """Look back through the room (``Engine.look_back``) once after each delay
    until ``done()``: "found" when an attempt ended with it done, "gone" when it
    was done before an attempt (something else filled the hole), "missing" when
    every attempt is spent.

    ``visit`` sees each event newest first and returns True to end that attempt
    (the hole is passed or filled). A failed attempt is logged at INFO and the
    next one runs after its delay: a server whose page was full locally
    backfills in the background, so paging through the same region again later
    can find what the first walk did not.
    """
    types = list(types)
    for delay in delays:
        await anyio.sleep(delay)
        if done():
            return "gone"
        try:
            async for ev in engine.look_back(room_id, types, max_events=max_events):
                if visit(ev):
                    break
        except (HomeserverUnavailable, TransientError, MatrixError) as exc:
            log.info("looking back for %s failed (%s)", what, exc)
        if done():
            return "found"
    return "missing"
