"""Leaving an ``async with`` block whose object owns a task group.

anyio wraps every exception that leaves a task group in an ExceptionGroup, the
one raised by the body of ``async with`` too. Client, SyncedDoc, Publisher and
Subscriber each own a task group, so ``await pub.flush()`` raising
ForbiddenError inside ``async with client, client.publisher(...) as pub:``
would reach the caller as a ForbiddenError nested in two ExceptionGroups, which
``except ForbiddenError`` does not catch. :func:`exit_stack` gives the body's
own exception back unwrapped; a failure of a background task still comes out
as an ExceptionGroup (it did not come from the caller's code).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType

__all__ = ["exit_stack"]


async def exit_stack(
    stack: AsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool | None:
    """``await stack.__aexit__(...)``, re-raising the body's exception unwrapped."""
    try:
        return await stack.__aexit__(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        if exc is None or len(group.exceptions) != 1 or group.exceptions[0] is not exc:
            raise
    raise exc
