"""mxsync: keep shared data current through Matrix rooms.

CRDT documents (pycrdt, Yjs-compatible) that any number of clients edit at
once, and sensor streams that devices publish and dashboards watch.
"""

from .client import Client
from .docs import MatrixCrdtDoc, SyncedDoc
from .engine import OutgoingEvent, RoomEvent, SendHandle, Status
from .errors import (
    CommandError,
    CommandExpired,
    CommandFailed,
    CommandTimeout,
    ConfigError,
    ForbiddenError,
    HomeserverUnavailable,
    LoginError,
    MatrixError,
    MxsyncError,
    ProtocolError,
    RateLimitedError,
)
from .streams import Command, Publisher, Reading, Subscriber

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Command",
    "CommandError",
    "CommandExpired",
    "CommandFailed",
    "CommandTimeout",
    "ConfigError",
    "ForbiddenError",
    "HomeserverUnavailable",
    "LoginError",
    "MatrixCrdtDoc",
    "MatrixError",
    "MxsyncError",
    "OutgoingEvent",
    "ProtocolError",
    "Publisher",
    "RateLimitedError",
    "Reading",
    "RoomEvent",
    "SendHandle",
    "Status",
    "Subscriber",
    "SyncedDoc",
]
