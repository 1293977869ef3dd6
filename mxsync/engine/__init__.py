"""The I/O half of mxsync: HTTP, store, outbox, sync loop, and the Connection that owns them.

Features use it through :class:`~mxsync.engine.surface.Engine` only.
"""

from .connection import Connection
from .events import MessagesPage, RoomEvent
from .outbox import OutboxEntry, OutgoingEvent, SendHandle, Staging
from .store import Store
from .surface import Engine
from .sync import Status

__all__ = [
    "Connection",
    "Engine",
    "MessagesPage",
    "OutboxEntry",
    "OutgoingEvent",
    "RoomEvent",
    "SendHandle",
    "Staging",
    "Status",
    "Store",
]
