"""The I/O half of mxsync: HTTP, store, outbox, sync loop and the Client that owns them."""

from .client import Client, MessagesPage
from .events import RoomEvent
from .outbox import OutgoingEvent, SendHandle
from .store import Store
from .sync import Status

__all__ = ["Client", "MessagesPage", "OutgoingEvent", "RoomEvent", "SendHandle", "Status", "Store"]
