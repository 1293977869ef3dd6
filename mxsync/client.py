"""Client: the object users hold. The engine's connection, plus the features.

``async with Client(homeserver, user_id, password=..., store_path=...) as client``
logs in, starts the sync loop and the outbox
(:class:`~mxsync.engine.connection.Connection` owns them) and opens documents
(``open_doc``) and sensor streams (``publisher``, ``subscribe``) on them. The
features get the engine only through its declared surface
(:class:`~mxsync.engine.surface.Engine`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, overload

import msgspec

from .docs import MatrixCrdtDoc, SyncedDoc, open_doc
from .engine.connection import Connection
from .engine.outbox import OutboxStatistics
from .engine.sync import SyncStatistics
from .errors import ConfigError
from .streams import Publisher, Subscriber

__all__ = ["Client", "ClientStatistics", "LivenessStatistics"]


class LivenessStatistics(msgspec.Struct, frozen=True):
    """The shared "does the homeserver answer?" signal."""

    #: True: the last request got an answer; False: none; None: unknown (a 5xx).
    up: bool | None
    #: Probes of /versions made while the server did not answer.
    probes: int
    #: Times a probe saw the server come back and woke the loops backing off.
    recoveries: int


class ClientStatistics(msgspec.Struct, frozen=True):
    """What one client has done since it started."""

    #: HTTP requests made (retries and probes included).
    requests: int
    sync: SyncStatistics
    outbox: OutboxStatistics
    liveness: LivenessStatistics


class Client(Connection):
    """A Matrix account that keeps mxsync data current: documents and sensor streams."""

    @overload
    def open_doc(self, room_id: str, name: str = ..., *, compat: None = None,
                 **kw: Any) -> SyncedDoc: ...
    @overload
    def open_doc(self, room_id: str, name: str = ..., *, compat: Literal["matrix-crdt"],
                 **kw: Any) -> MatrixCrdtDoc: ...
    def open_doc(self, room_id: str, name: str = "default", *, compat: str | None = None,
                 **kw: Any) -> SyncedDoc | MatrixCrdtDoc:
        """``async with client.open_doc(room, name) as sdoc``: a synced CRDT document.

        See :class:`mxsync.docs.SyncedDoc` for the keyword arguments.
        ``compat="matrix-crdt"``: the room's document in the Matrix-CRDT 0.2 wire
        format (:class:`mxsync.docs.MatrixCrdtDoc`), shared with Matrix-CRDT JS apps.
        """
        if compat is None:
            return open_doc(self, room_id, name, **kw)
        if compat != "matrix-crdt":
            raise ConfigError(f"unknown compat mode {compat!r}; known: 'matrix-crdt'")
        return open_doc(self, room_id, name, compat="matrix-crdt", **kw)

    def publisher(self, room_id: str, *, device: str, **kw: Any) -> Publisher:
        """``async with client.publisher(room, device="d1") as pub``: publish readings.

        See :class:`mxsync.streams.Publisher` for the keyword arguments.
        """
        return Publisher(self, room_id, device, **kw)

    def subscribe(
        self, room_id: str, sensors: Iterable[str] | None = None, **kw: Any
    ) -> Subscriber:
        """``async with client.subscribe(room) as sub``: live readings, history, devices.

        See :class:`mxsync.streams.Subscriber` for the keyword arguments.
        """
        return Subscriber(self, room_id, sensors, **kw)

    def statistics(self) -> ClientStatistics:
        live = self.http.liveness
        return ClientStatistics(
            requests=self.http.requests,
            sync=self.sync.statistics(),
            outbox=self.outbox.statistics(),
            liveness=LivenessStatistics(up=live.up, probes=live.probes,
                                        recoveries=live.recoveries),
        )
