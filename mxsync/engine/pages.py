"""One way to walk /messages: an async iterator over pages with one stop rule.

Every reader of room history (the sync loop's gap fill, documents' loads,
history queries, power levels in the past) pages through here. The rule:
the walk ends when the server gives no ``end`` token, or one that does not
move (the spec's "no further events"). An empty page *with* a new token goes
on: the server may have filtered out events we cannot see. Any other stop
(found an event, passed a time, enough events) is the caller's ``break``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from .events import MessagesPage

__all__ = ["paginate"]


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
