"""Leaving an ``async with`` block whose object owns a task group.

anyio wraps every exception that leaves a task group in an ExceptionGroup, the
one raised by the body of ``async with`` too. Client, SyncedDoc, Publisher and
Subscriber each own a task group, so ``await pub.flush()`` raising
ForbiddenError inside ``async with client, client.publisher(...) as pub:``
would reach the caller as a ForbiddenError nested in two ExceptionGroups, which
``except ForbiddenError`` does not catch. :func:`exit_stack` gives the body's
own exception back unwrapped; a failure of a background task still comes out
as an ExceptionGroup (it did not come from the caller's code).

:class:`StackOwner` is the one ``__aenter__``/``__aexit__`` pair of all those
objects: the subclass says in :meth:`StackOwner._setup` what to start and
what to undo, onto an :class:`~contextlib.AsyncExitStack` kept open in
``self._stack`` until the block is left. Features and the gateway subclass it
(they may import the engine; the engine imports none of them).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

__all__ = ["StackOwner", "exit_stack"]


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


class StackOwner:
    """An async context manager whose resources and tasks live on one exit stack.

    ``async with obj`` runs :meth:`_setup` on a new AsyncExitStack: what it
    enters or pushes is undone at once, in reverse, if it raises, and else on
    leaving the block, through :func:`exit_stack` (the body's exception comes
    back unwrapped). ``self._stack`` is None while the object is not open.
    Leaving runs :meth:`_closing` first (the parts still running), then the
    stack, then :meth:`_closed` whatever happened. A subclass with more to do
    around either side overrides ``__aenter__`` or ``__aexit__`` and calls
    ``super()``'s.
    """

    _stack: AsyncExitStack | None = None

    async def _setup(self, stack: AsyncExitStack) -> None:
        """Start the object's parts, pushing onto ``stack`` how to stop each."""
        raise NotImplementedError

    async def _closing(self, exc_type: type[BaseException] | None) -> None:
        """On leaving, before the stack unwinds (``exc_type``: how the body ended)."""

    def _closed(self) -> None:
        """On leaving, after the stack unwound or failed to."""

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await self._setup(stack)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self._closing(exc_type)
        stack, self._stack = self._stack, None
        try:
            if stack is None:
                return None
            return await exit_stack(stack, exc_type, exc, tb)
        finally:
            self._closed()
