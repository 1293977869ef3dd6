"""The last values of a room's sensors, as a subscriber knows them.

:class:`LastValues` owns, for one :class:`~mxsync.streams.subscriber.Subscriber`,
the sensors' metadata from their ``org.mxsync.sensor`` state (with the last
value a publisher keeps there, the retained message), the newest reading of
each sensor seen live, and which sensors it has already looked up in the
room's newest batches. The Subscriber feeds it sensor states and live batches
and delegates ``sensors`` and ``latest`` to it.

Invariants:
- ``latest`` answers the newest of three: the newest reading seen live, the
  state's last value, and (once per sensor) the newest reading among the last
  ``scan`` batches of the room, judged by the power levels where each stands.
  Of two of one time, the one from a batch (it has an identity) wins over the
  state's copy.
- A sensor state older (by server time) than the one already taken is ignored.
"""

from __future__ import annotations

import msgspec

from ..engine.authz import levels_backwards
from ..engine.events import RoomEvent
from ..engine.surface import Engine
from ..errors import ProtocolError
from ..protocol.readings import Reading, SensorMeta
from ..protocol.types import POWER_LEVELS, READINGS
from .history import BatchReader

__all__ = ["LastValues"]


class LastValues:
    """Sensor metadata and last values of one room (see the module docstring)."""

    def __init__(self, client: Engine, room_id: str, reader: BatchReader, *,
                 scan: int, skew_ms: int) -> None:
        self._client = client
        self._room = room_id
        self._reader = reader
        #: The newest batches ``latest`` looks through at most.
        self._scan_limit = scan
        self._skew_ms = skew_ms
        self._last: dict[str, Reading] = {}
        self._scanned: set[str] = set()
        self._meta: dict[str, tuple[int, SensorMeta]] = {}

    def sensors(self) -> dict[str, SensorMeta]:
        """The sensors the room's state describes, by id (a copy)."""
        return {k: v for k, (_, v) in self._meta.items()}

    def apply_meta(self, ev: RoomEvent, meta: SensorMeta) -> None:
        """A sensor state event (judged already) of the sensor ``ev.state_key``."""
        assert ev.state_key is not None
        old = self._meta.get(ev.state_key)
        if old is None or ev.origin_server_ts >= old[0]:
            self._meta[ev.state_key] = (ev.origin_server_ts, meta)

    def note(self, newest: dict[str, Reading]) -> None:
        """A live batch's newest reading of each of its sensors."""
        for sensor, r in newest.items():
            old = self._last.get(sensor)
            if old is None or r.t_ms >= old.t_ms:
                self._last[sensor] = r

    async def latest(self, sensor: str, creators: frozenset[str]) -> Reading | None:
        """The newest reading of ``sensor`` known: seen live, in the sensor's
        state, or in the newest batches of the room (``creators``: the room's,
        for the power levels found there)."""
        best = self._last.get(sensor)
        entry = self._meta.get(sensor)
        meta = None if entry is None else entry[1]
        if meta is not None and meta.last_t_ms is not None:
            try:
                value = meta.last_value()
            except ProtocolError:
                value = None
            if value is not None:
                best = _newer(best, Reading(sensor, meta.last_t_ms, value, meta.unit,
                                            meta.device))
        if sensor not in self._scanned:
            best = _newer(best, await self._scan(sensor, best, creators))
            self._scanned.add(sensor)
        return best

    async def _scan(self, sensor: str, known: Reading | None,
                    creators: frozenset[str]) -> Reading | None:
        """The newest reading of ``sensor`` in the last ``scan`` batches."""
        if self._scan_limit < 1:
            return None  # nothing to look through: not even one request
        scanned = 0
        async for page in self._client.pages(
            self._room, None, direction="b", limit=min(20, self._scan_limit),
            types=[READINGS, POWER_LEVELS],
        ):
            levels = await levels_backwards(self._client, self._room, page, creators)
            for ev, in_force in zip(page.events, levels, strict=True):
                scanned += 1
                if known is not None and ev.origin_server_ts < known.t_ms - self._skew_ms:
                    return None
                batch = self._reader.batch(ev, in_force)
                if batch is None or not any(s.sensor == sensor for s in batch.series):
                    continue
                readings = self._reader.readings(ev, batch)
                if readings:
                    mine = [(r.t_ms, i) for i, r in enumerate(readings) if r.sensor == sensor]
                    if not mine:
                        return None
                    _, i = max(mine, key=lambda p: (p[0], -p[1]))  # the first of the newest
                    return msgspec.structs.replace(readings[i], session=batch.session, index=i)
            if scanned >= self._scan_limit:
                break
        return None


def _newer(a: Reading | None, b: Reading | None) -> Reading | None:
    if a is None:
        return b
    if b is None:
        return a
    # Of two of one time, the one from a batch (it has an identity) over the state's copy.
    if b.t_ms > a.t_ms or (b.t_ms == a.t_ms and a.index is None and b.index is not None):
        return b
    return a
