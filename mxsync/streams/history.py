"""Reading a room's past: one sensor's readings over a time range, and buckets of them.

``read_history`` jumps near the start of the range with the
timestamp-to-event API (MSC3030), looks up the power levels in force there, then
pages ``/messages`` forwards, reading only ``org.mxsync.readings`` and
``m.room.power_levels`` events and unpacking only the batches that carry the
sensor. ``aggregate`` turns readings into fixed buckets for dashboards.

Where the range ends in the room is a matter of clocks, so two margins bound
the scan (both in ms):

- ``skew``: a batch may be stored up to this long *before* the time of a reading
  in it (the device's clock runs ahead of the homeserver's);
- ``lag``: it may be stored up to this long *after* (batching, rate limits,
  outages). Readings that reach the homeserver later than ``lag`` after their
  time are not found; raise it for devices that buffer through long outages.

:class:`BatchReader` is the one place where readings events are judged: the
sender's power level under the levels in force at the event's place in the
timeline (PROTOCOL.md 1.3; the caller follows them and passes them in), the
content's validity (a malformed batch is skipped and logged once per sender),
shared by the live subscriber and history. Those levels come from
:mod:`mxsync.engine.authz`, the one owner of that rule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from operator import attrgetter

import msgspec

from ..engine.authz import PowerLevels, power_levels_before, room_creators
from ..engine.events import RoomEvent
from ..engine.surface import Engine
from ..errors import ConfigError, ProtocolError
from ..protocol.readings import MAX_T_MS, Reading, ReadingsBatch, parse_batch
from ..protocol.types import CREATE, POWER_LEVELS, READINGS

__all__ = [
    "Bucket",
    "HistoryProgress",
    "BatchReader",
    "read_history",
    "aggregate",
    "bucket_bounds",
]

log = logging.getLogger("mxsync.streams")

by_time = attrgetter("t_ms")


class HistoryProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How far a history scan is: events read, batches unpacked, readings found,
    and the homeserver time reached (``fraction`` of the range to scan, 0..1)."""

    events: int
    batches: int
    readings: int
    position_ms: int
    fraction: float


class Bucket(msgspec.Struct, frozen=True, kw_only=True):
    """Aggregate of the readings with ``start_ms <= t_ms < end_ms``.

    ``min``/``max``/``mean`` cover the numbers only (int and float values;
    never bools, never str); they are None when the bucket has none, and
    ``numbers`` says how many there were. ``count`` counts every reading, bools
    and str values included. ``mean`` is ``math.fsum(values) / numbers``.
    """

    start_ms: int
    end_ms: int
    count: int
    min: int | float | None = None
    max: int | float | None = None
    mean: float | None = None
    #: Readings aggregated into min/max/mean (the int and float ones).
    numbers: int = 0


class BatchReader:
    """Validates ``org.mxsync.readings`` events of one room; logs each bad sender once."""

    def __init__(self, client: Engine, room_id: str) -> None:
        self._client = client
        self._room = room_id
        self._warned: set[tuple[str, str]] = set()
        self.malformed = 0
        self.forbidden = 0

    def batch(self, ev: RoomEvent, levels: PowerLevels) -> ReadingsBatch | None:
        """The batch of ``ev``, or None if it is not a batch we may trust.

        ``levels`` are the power levels in force at ``ev``'s place in the timeline.
        """
        if ev.type != READINGS or ev.state_key is not None:
            return None
        if not levels.allows(ev):
            self.forbidden += 1
            self.warn_once("forbidden", ev.sender,
                           "ignoring readings of %s in %s: no power level for %s where "
                           "they stand", ev.sender, self._room, READINGS)
            return None
        try:
            return parse_batch(ev.content)
        except ProtocolError as exc:
            self.bad(ev, exc)
            return None

    def readings(self, ev: RoomEvent, batch: ReadingsBatch, *,
                 identity: bool = False) -> list[Reading] | None:
        """The readings of a trusted batch (with ``identity``: each carrying the
        batch's session and its index), or None if the data is malformed."""
        try:
            return batch.readings(identity=identity)
        except ProtocolError as exc:
            self.bad(ev, exc)
            return None

    def bad(self, ev: RoomEvent, exc: Exception) -> None:
        self.malformed += 1
        self.warn_once("malformed", ev.sender,
                       "skipping a malformed %s event %s from %s in %s: %s "
                       "(further ones from this sender are logged at debug level)",
                       ev.type, ev.event_id, ev.sender, self._room, exc)
        log.debug("skipping malformed event %s: %s", ev.event_id, exc)

    def warn_once(self, kind: str, sender: str, msg: str, *args: object) -> None:
        """Log ``msg`` at warning level the first time ``sender`` does ``kind``."""
        if (kind, sender) not in self._warned:
            if len(self._warned) < 10_000:
                self._warned.add((kind, sender))
            log.warning(msg, *args)


def check_range(start_ms: int, end_ms: int) -> None:
    for name, v in (("start_ms", start_ms), ("end_ms", end_ms)):
        if type(v) is not int or not 0 <= v <= MAX_T_MS:
            raise ConfigError(f"{name} must be an int time in ms, got {v!r}")


async def read_history(
    client: Engine,
    room_id: str,
    sensor: str,
    start_ms: int,
    end_ms: int,
    *,
    reader: BatchReader,
    skew_ms: int,
    lag_ms: int,
    page_size: int = 50,
    progress: Callable[[HistoryProgress], object] | None = None,
) -> list[Reading]:
    """The readings of ``sensor`` with ``start_ms <= t_ms < end_ms``, by time
    (readings of one time keep the room's order). Each batch counts once even
    if the homeserver holds it twice."""
    check_range(start_ms, end_ms)
    if end_ms <= start_ms:
        return []
    scan_from = max(0, start_ms - skew_ms)
    stop_at = end_ms + lag_ms
    jump = await client.timestamp_to_event(room_id, scan_from, "f")
    if jump is None:
        return []
    first, token = await client.context(room_id, jump[0])
    events: list[RoomEvent] = [first] if first is not None else []
    # The levels in force right after the first event (before it, unless it sets them).
    levels = PowerLevels(
        await power_levels_before(client, room_id, token),
        room_creators(await client.state_event(room_id, CREATE)),
    )
    scan = _Scan(reader, sensor, start_ms, end_ms, scan_from, stop_at, levels, progress)
    if not scan.take(events) and token is not None:
        async for page in client.pages(room_id, token, direction="f", limit=page_size,
                                       types=[READINGS, POWER_LEVELS]):
            if page.events and scan.take(page.events):
                break
    found = scan.found
    found.sort(key=by_time)
    return found


class _Scan:
    """The state of one ``read_history`` walk: batches seen, readings found, the
    power levels in force and how far it got."""

    def __init__(
        self,
        reader: BatchReader,
        sensor: str,
        start_ms: int,
        end_ms: int,
        scan_from: int,
        stop_at: int,
        levels: PowerLevels,
        progress: Callable[[HistoryProgress], object] | None,
    ) -> None:
        self._reader = reader
        self._sensor = sensor
        self._start_ms, self._end_ms = start_ms, end_ms
        self._scan_from, self._stop_at = scan_from, stop_at
        self._levels = levels
        self._progress = progress
        self._seen: set[tuple[str, str, int | None, int]] = set()
        self.found: list[Reading] = []
        self._events = self._batches = 0
        self._position = scan_from

    def take(self, events: list[RoomEvent]) -> bool:
        """Read one page of events (in timeline order); True: the range is done."""
        sensor, reader = self._sensor, self._reader
        done = False
        for ev in events:
            if ev.origin_server_ts >= self._stop_at:
                done = True
                break
            self._position = max(self._position, ev.origin_server_ts)
            self._events += 1
            self._levels = self._levels.after(ev)
            batch = reader.batch(ev, self._levels)
            if batch is None:
                continue
            key = (ev.sender, batch.device, batch.session, batch.seq)
            if key in self._seen:
                continue
            self._seen.add(key)
            if not any(s.sensor == sensor for s in batch.series):
                continue
            readings = reader.readings(ev, batch)
            if readings is None:
                continue
            self._batches += 1
            self.found.extend(
                r for r in readings
                if r.sensor == sensor and self._start_ms <= r.t_ms < self._end_ms
            )
        if self._progress is not None:
            span = max(1, self._stop_at - self._scan_from)
            self._progress(HistoryProgress(
                events=self._events, batches=self._batches, readings=len(self.found),
                position_ms=self._position,
                fraction=1.0 if done else min(1.0, (self._position - self._scan_from) / span),
            ))
        return done


def bucket_bounds(start_ms: int, end_ms: int, buckets: int) -> list[int]:
    """The ``buckets + 1`` edges of equal buckets over [start_ms, end_ms), in ms.

    Edge i is ``start_ms + ceil(i * (end_ms - start_ms) / buckets)``, so that a
    time t falls in bucket ``(t - start_ms) * buckets // (end_ms - start_ms)``.
    """
    if type(buckets) is not int or buckets < 1:
        raise ConfigError(f"buckets must be an int >= 1, got {buckets!r}")
    check_range(start_ms, end_ms)
    if end_ms <= start_ms:
        raise ConfigError("end_ms must be after start_ms")
    width = end_ms - start_ms
    return [start_ms + -(-i * width // buckets) for i in range(buckets + 1)]


def aggregate(
    readings: Iterable[Reading], start_ms: int, end_ms: int, buckets: int
) -> list[Bucket]:
    """min/max/mean/count per bucket (see :class:`Bucket`); readings outside
    [start_ms, end_ms) are ignored."""
    edges = bucket_bounds(start_ms, end_ms, buckets)
    width = end_ms - start_ms
    counts = [0] * buckets
    values: list[list[int | float]] = [[] for _ in range(buckets)]
    for r in readings:
        if not start_ms <= r.t_ms < end_ms:
            continue
        i = (r.t_ms - start_ms) * buckets // width
        counts[i] += 1
        v = r.value
        if type(v) is int or type(v) is float:
            values[i].append(v)  # type: ignore[arg-type]
    out = []
    for i in range(buckets):
        vs = values[i]
        out.append(Bucket(
            start_ms=edges[i], end_ms=edges[i + 1], count=counts[i],
            min=min(vs) if vs else None,
            max=max(vs) if vs else None,
            mean=math.fsum(vs) / len(vs) if vs else None,
            numbers=len(vs),
        ))
    return out
