"""Registering a consumer with a producer that hands items to many.

Producers here keep a list of consumers, each holding the send side of its own
bounded memory object stream: the sync loop's :mod:`~mxsync.engine.dispatch`
(room events), the to-device channel (:mod:`~mxsync.engine.todevice`) and a
subscriber's device tracker (:mod:`mxsync.streams.devices`, status changes).
:func:`registered` is their one way to add one: the consumer is in the list
while its caller holds the receive side; on leaving it is taken out and its
stream closed, so the producer never sends to a reader that is gone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["registered"]

C = TypeVar("C")
T = TypeVar("T")


@asynccontextmanager
async def registered(
    consumers: list[C], make: Callable[[MemoryObjectSendStream[T]], C], buffer: int
) -> AsyncIterator[MemoryObjectReceiveStream[T]]:
    """A new stream of ``buffer`` items whose send side ``make`` wraps into the
    consumer kept in ``consumers`` while the block runs; yields the receive side."""
    send: MemoryObjectSendStream[T]
    recv: MemoryObjectReceiveStream[T]
    send, recv = anyio.create_memory_object_stream(buffer)
    consumer = make(send)
    consumers.append(consumer)
    try:
        async with recv:
            yield recv
    finally:
        if consumer in consumers:
            consumers.remove(consumer)
        send.close()
