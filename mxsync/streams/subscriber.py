"""Subscriber: live readings, last values, history and device presence of one room.

``async with client.subscribe(room_id) as sub`` waits for the client's first
sync, registers with its sync loop and only then reads the room's state, so
nothing that happens in between is missed; ``async for reading in sub`` then
yields the readings that arrive from that moment on (the past is ``history``).

Invariants:
- Readings come out batch by batch in the order the homeserver stores them,
  each batch sorted by ``t_ms`` (stable): a publisher whose times do not go
  back (the default clock) gives every sensor its readings in time order.
- Per (sender, device, session) a batch whose ``seq`` is not above the last
  one is skipped: a duplicate if it is another event (a send that landed
  twice, a batch posted again), an overlap if it is the very event taken
  before (the seam between a replay of history and the live events queued
  meanwhile; :class:`~mxsync.streams.holes.Chains` keeps the ids). On a
  jump the subscriber looks back in the room (bounded, with backoff; paging
  backwards makes the server backfill from other servers) for the batches
  skipped and takes those found first, in order; what stays missing counts as
  a gap (``statistics()``) and is logged. The engine already fills gaps of the
  sync itself, so a gap that stays means the publisher dropped batches
  (overflow policy) or lost them.
- Batches, sensor and device states from senders without the power level to
  send them *where they stand in the timeline* (not by the room's current
  levels, PROTOCOL.md 1.3), and malformed ones, are skipped and logged once
  per sender; nothing stops the loop. Live, the subscriber follows the
  ``m.room.power_levels`` events the sync loop delivers in timeline order,
  starting from the levels in force when it registered.
- Live readings go through a bounded stream (``buffer`` batches): a consumer
  that does not iterate slows the client's sync loop down. A subscriber used
  only for ``latest``/``history``/devices passes ``live=False``.
- Every reading handed out carries its identity (``Reading.identity``:
  device, session, seq, index in its batch). A durable subscriber
  (``durable=NAME``) hands out, after a restart, everything after the position
  ``ack()`` last committed, then live (:mod:`mxsync.streams.durable`).
- ``history``/``window`` within the retention answer from the batch index
  (:mod:`mxsync.streams.index`), exact by reading time; sensor and device
  state that is malformed falls back to its newest valid version
  (:mod:`mxsync.streams.state`).
- Device presence (online/offline, inferred from missed heartbeats) is kept
  by a :class:`~mxsync.streams.devices.DeviceTracker`, sensor metadata and
  last values by a :class:`~mxsync.streams.latest.LastValues`: the subscriber
  owns both and feeds them what the room brings; ``devices``,
  ``wait_device``, ``device_changes``, ``sensors`` and ``latest`` delegate.
  This module owns the receive path itself: the live stream, the per-session
  seq check and hole repair, the power levels in force, the durable position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from operator import attrgetter
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..engine.authz import PowerLevels, power_levels_before, room_creators
from ..engine.events import RoomEvent
from ..engine.surface import Engine
from ..engine.taskgroups import StackOwner
from ..errors import ConfigError, ProtocolError
from ..protocol.readings import (
    Reading,
    ReadingsBatch,
    SensorMeta,
    validate_device_id,
    validate_sensor_id,
)
from ..protocol.types import CREATE, DEVICE, POWER_LEVELS, READINGS, SENSOR
from . import durable as durable_pos
from .commands import DEFAULT_EXPIRY, send_command
from .devices import DeviceStatus, DeviceTracker
from .history import (
    BatchReader,
    Bucket,
    HistoryProgress,
    aggregate,
    by_time,
    check_range,
    read_history,
)
from .holes import Chains, Key, find_batches
from .index import BatchIndex
from .latest import LastValues
from .state import StreamState, decode_state, load_state

__all__ = ["Subscriber", "SubscriberStatistics", "DeviceStatus"]

log = logging.getLogger("mxsync.streams.subscriber")



def _now_ms() -> int:
    return int(time.time() * 1000)


class SubscriberStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Subscriber.statistics` reports (live batches since the start)."""

    #: Live batches taken in (each (sender, device, session, seq) once).
    batches: int
    #: Readings delivered to the live stream (after the sensor filter).
    readings: int
    #: Real duplicates: another event with a seq not above the last of its
    #: (sender, device, session), e.g. a send that landed twice or a batch posted
    #: again. Skipped.
    duplicates: int
    #: Jumps in a session's seq numbers (each is logged).
    gaps: int
    #: Batches those jumps skipped over (dropped by the device, or lost) and that
    #: looking back did not find either.
    missing_batches: int
    #: Batches found by looking back after a jump (taken late, in order).
    repaired_batches: int = 0
    #: The same event brought twice, taken once: the seam between the replay of
    #: history (``start="earliest"``, a durable restart) and the live events that
    #: queued meanwhile, or a batch found by looking back that then arrived live.
    #: Skipped; not duplicates (nothing was posted twice).
    overlap: int = 0
    #: Malformed readings events skipped (live, latest and history).
    malformed: int
    #: Readings events skipped: their sender had no power level for them there.
    forbidden: int
    #: Device status changes a watcher missed because its queue was full.
    lost_device_changes: int
    #: Events the batch index's backwards walk read (streams/index.py): the
    #: room back to the retention bound the first time, back to where the
    #: index stopped after a restart.
    index_walk_events: int = 0
    #: Batches history fetched (``/context``) because they were not cached.
    index_fetched: int = 0


class Subscriber(StackOwner):
    """Live readings and queries of one room; an async context manager.

    Use ``client.subscribe(room_id, sensors=None)``; ``sensors`` limits the live
    readings to those sensor ids. Keyword arguments (durations in seconds):

    - ``live`` (True): keep a stream of live readings (iterate it, or pass False).
    - ``buffer`` (64): batches the live stream holds before it slows the sync.
    - ``check_interval`` (0.5): how often missed heartbeats are looked for.
    - ``history_retention`` (30 days): how far back the local batch index
      (:mod:`mxsync.streams.index`) reaches; ``history``/``window`` over ranges
      within it are exact by reading time, whenever the batches were uploaded.
    - ``history_skew`` (60.0) / ``history_lag`` (120.0): how far a batch may have
      been stored before / after the time of its readings: the bounds of the
      timestamp scan that answers ranges older than the retention.
    - ``page_size`` (50): events per /messages page in history scans.
    - ``latest_scan`` (50): newest batches ``latest`` looks through at most.
    - ``durable`` (None): a name under which the client's store keeps what the
      consumer acknowledged (``await sub.ack()``); a subscriber started again
      with the same store and name hands out everything after that first, then
      goes on live (:mod:`mxsync.streams.durable`). Without it, live means from now on.
    - ``start`` ("now"): where the live stream begins when there is no durable
      position yet: ``"now"``, or ``"earliest"`` (every batch the room shows,
      from its first visible event, then live).
    """

    def __init__(
        self,
        client: Engine,
        room_id: str,
        sensors: Iterable[str] | None = None,
        *,
        live: bool = True,
        buffer: int = 64,
        check_interval: float = 0.5,
        history_skew: float = 60.0,
        history_lag: float = 120.0,
        page_size: int = 50,
        latest_scan: int = 50,
        durable: str | None = None,
        start: str = "now",
        history_retention: float = 30 * 86_400.0,
    ) -> None:
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise ConfigError(f"not a room id: {room_id!r}")
        if isinstance(sensors, str):
            raise ConfigError("sensors must be a collection of sensor ids, not one str")
        self._filter = None if sensors is None else {validate_sensor_id(s) for s in sensors}
        if type(buffer) is not int or buffer < 1:
            raise ConfigError(f"buffer must be an int >= 1, got {buffer!r}")
        if type(page_size) is not int or not 1 <= page_size <= 1000:
            raise ConfigError(f"page_size must be within 1..1000, got {page_size!r}")
        for name, v in (("check_interval", check_interval), ("history_skew", history_skew),
                        ("history_lag", history_lag), ("history_retention", history_retention)):
            if not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {v!r}")
        self._client = client
        self._room = room_id
        self._durable = None if durable is None else durable_pos.validate_name(durable)
        if self._durable is not None and not live:
            raise ConfigError("a durable subscriber is a live one: drop live=False")
        if start not in ("now", "earliest"):
            raise ConfigError(f"start must be 'now' or 'earliest', got {start!r}")
        if start == "earliest" and not live:
            raise ConfigError("start='earliest' is for live subscribers: drop live=False")
        self._start = start
        #: The consumer's position: last committed, and what ack() would commit.
        self._position: durable_pos.Position | None = None
        self._current_event: str | None = None
        self._live = live
        self._buffer = buffer
        self._skew_ms = int(history_skew * 1000)
        self._lag_ms = int(history_lag * 1000)
        self._retention_ms = int(history_retention * 1000)
        self._index: BatchIndex | None = None
        self._page_size = page_size
        self._reader = BatchReader(client, room_id)
        #: The levels in force after the last live event taken into account.
        self._levels = PowerLevels()
        self._send: MemoryObjectSendStream[tuple[str, list[Reading]]] | None = None
        self._recv: MemoryObjectReceiveStream[tuple[str, list[Reading]]] | None = None
        self._current: list[Reading] = []
        self._pos = 0
        self._base = 0
        self._chains = Chains()
        self._values = LastValues(client, room_id, self._reader, scan=latest_scan,
                                  skew_ms=self._skew_ms)
        self._devices = DeviceTracker(max(0.05, float(check_interval)))
        # Counters (statistics()).
        self._batches = 0
        self._readings = 0

    def __repr__(self) -> str:
        return f"<Subscriber of {self._room}>"

    # -- lifecycle -----------------------------------------------------------

    async def _setup(self, stack: AsyncExitStack) -> None:
        if self._live:
            self._send, self._recv = anyio.create_memory_object_stream[
                tuple[str, list[Reading]]](self._buffer)
            stack.enter_context(self._send)
            stack.enter_context(self._recv)
        # Live means from now on: the first sync of a new client (recent history)
        # is not live. Then registered before the state is read, so that nothing
        # falls between the two. Errors (not joined, ...) are raised unwrapped.
        await self._client.wait_synced()
        creators = room_creators(await self._client.state_event(self._room, CREATE))
        recv = await stack.enter_async_context(
            self._client.room_events(self._room, (READINGS, SENSOR, DEVICE, POWER_LEVELS))
        )
        # The state is cached now (state_event above), so no checkpoint separates
        # registering from this read: these are the levels the sync loop had
        # reached, in force right before the first event the stream will bring.
        self._levels = PowerLevels(
            await self._client.get_state(self._room, POWER_LEVELS), creators
        )
        await self._load_state()
        self._index = BatchIndex(self._client, self._room, self._reader,
                                 retention_ms=self._retention_ms, skew_ms=self._skew_ms,
                                 creators=creators)
        await self._index.open()
        if self._durable is not None:
            name = self._durable
            self._position = await self._client.run_sql(
                lambda c: durable_pos.load(c, self._room, name))
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(self._run, recv)
        tg.start_soon(self._devices.watch_heartbeats)

    async def _closing(self, exc_type: type[BaseException] | None) -> None:
        self._devices.close()

    async def _run(self, recv: MemoryObjectReceiveStream[RoomEvent]) -> None:
        if self._position is not None:
            await durable_pos.replay(self._client, self._room, self._position,
                                     self._replay_first, self._on_event)
        elif self._start == "earliest":
            self._levels = PowerLevels(None, self._levels.creators)  # before any levels
            await durable_pos.replay_from_start(self._client, self._room, self._on_event)
        async for ev in recv:
            await self._on_event(ev)
            if self._index is not None:
                await self._index.seen_live(ev)
        if self._send is not None:
            self._send.close()

    async def _load_state(self) -> None:
        # Malformed or refused states fall back to their newest valid version.
        for ev, value in await load_state(self._client, self._room, self._levels.creators):
            self._apply_state(ev, value, seen_ms=ev.origin_server_ts)

    # -- events ------------------------------------------------------------------

    async def _on_event(self, ev: RoomEvent) -> None:
        """Take one live event into account, in timeline order."""
        if ev.type == POWER_LEVELS:
            self._levels = self._levels.after(ev)
        elif ev.type == READINGS and ev.state_key is None:
            await self._on_batch(ev)
        elif ev.state_key is not None and (ev.type == SENSOR or ev.type == DEVICE):
            if self._levels.allows(ev):
                await self._on_state(ev, seen_ms=_now_ms())
            else:
                self._reader.warn_once("forbidden " + ev.type, ev.sender,
                                       "ignoring %s events of %s in %s: no power level for them",
                                       ev.type, ev.sender, self._room)

    async def _replay_first(self, ev: RoomEvent, token: str | None) -> None:
        """The batch a durable consumer stopped in: its readings not acknowledged."""
        assert self._position is not None
        levels = PowerLevels(await power_levels_before(self._client, self._room, token),
                             self._levels.creators)
        batch = self._reader.batch(ev, levels)
        readings = None if batch is None else self._reader.readings(ev, batch, identity=True)
        if batch is None or readings is None:
            return
        await self._take(ev, (ev.sender, batch.device, batch.session), batch.seq, readings,
                         skip=self._position.done, sensors=_sensors(batch))

    async def _on_batch(self, ev: RoomEvent) -> None:
        batch = self._reader.batch(ev, self._levels)
        if batch is None:
            return
        key = (ev.sender, batch.device, batch.session)
        if self._chains.seen(ev, key, batch.seq):
            return
        readings = self._reader.readings(ev, batch, identity=True)
        if readings is None:
            return
        last = self._chains.last(key)
        if last is not None and batch.seq > last + 1:
            last = await self._fill_hole(key, last, batch.seq)
        if last is not None and batch.seq > last + 1:
            self._chains.missing_between(key, last, batch.seq)
        await self._take(ev, key, batch.seq, readings, sensors=_sensors(batch))

    async def _fill_hole(self, key: Key, last: int, upto: int) -> int:
        """Look back for the batches ``last+1 .. upto-1`` of ``key``
        (:mod:`mxsync.streams.holes`) and take the ones found in order; the last
        seq taken. Readings stay in order: later batches wait meanwhile."""
        found = await find_batches(self._client, self._room, self._reader, self._levels,
                                   key, last, upto)
        for seq in sorted(found):
            old, readings = found[seq]
            if seq > last + 1:
                self._chains.missing_between(key, last, seq)
            self._chains.repaired += 1
            await self._take(old, key, seq, readings)
            last = seq
        return last

    async def _take(self, ev: RoomEvent, key: Key, seq: int, readings: list[Reading], *,
                    skip: int = 0, sensors: int | None = None) -> None:
        """Take a batch's readings (decoded with their identity) into account and
        hand them out by time, after the first ``skip``. ``sensors``: how many
        sensors the batch has, if the caller knows (its series headers)."""
        batch_device = key[1]
        session = key[2]
        readings.sort(key=by_time)
        first, newest = _ends(readings, sensors)
        if self._index is not None:
            spans = {sensor: (r.t_ms, newest[sensor].t_ms) for sensor, r in first.items()}
            await self._index.note(ev, batch_device, session, seq, spans)
        self._chains.took(ev, key, seq)
        self._batches += 1
        self._devices.alive(batch_device, ev.sender)
        self._values.note(newest)
        if self._filter is not None:
            readings = [r for r in readings if r.sensor in self._filter]
        if skip:
            readings = readings[skip:]
        if readings:
            self._readings += len(readings)
            if self._send is not None:
                await self._send.send((ev.event_id, readings))

    async def _on_state(self, ev: RoomEvent, *, seen_ms: int) -> None:
        """A sensor or device state whose sender had the level for it."""
        try:
            value = decode_state(ev)
        except (ProtocolError, ConfigError) as exc:
            self._reader.bad(ev, exc)
            return
        self._apply_state(ev, value, seen_ms=seen_ms)

    def _apply_state(self, ev: RoomEvent, value: StreamState, *, seen_ms: int) -> None:
        if isinstance(value, SensorMeta):
            self._values.apply_meta(ev, value)
        else:
            self._devices.apply_state(ev, value, seen_ms=seen_ms)

    # -- live readings -----------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Reading]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Reading]:
        """What ``async for`` runs: :meth:`__anext__` as one async generator,
        which saves creating a coroutine per reading. Its state is the
        subscriber's (``_current``, ``_pos``), so it mixes with direct
        ``__anext__`` calls and a new loop goes on where a left one stopped."""
        while True:
            if self._pos < len(self._current):
                r = self._current[self._pos]
                self._pos += 1
                yield r
                continue
            try:
                r = await self.__anext__()
            except StopAsyncIteration:
                return
            yield r

    async def __anext__(self) -> Reading:
        while self._pos >= len(self._current):
            if self._recv is None:
                raise RuntimeError("this subscriber is not live (live=False) or not running")
            try:
                event_id, self._current = await self._recv.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise StopAsyncIteration from None
            self._pos = 0
            # The position counts from the first reading of a batch handed out
            # after a restart, which may not be the batch's first.
            self._base = (self._position.done if self._position is not None
                          and self._position.event_id == event_id else 0)
            self._current_event = event_id
        r = self._current[self._pos]
        self._pos += 1
        return r

    async def ack(self) -> None:
        """Acknowledge every reading handed out so far; committed to the store
        before it returns, so a restart with the same durable name never hands
        them out again (``durable`` subscribers only)."""
        if self._durable is None:
            raise RuntimeError("ack() needs a durable subscriber (subscribe(..., durable=NAME))")
        if self._current_event is None:
            return
        pos = durable_pos.Position(self._current_event, self._base + self._pos)
        if pos == self._position:
            return
        name = self._durable
        await self._client.run_sql(lambda c: durable_pos.save(c, self._room, name, pos))
        self._position = pos

    # -- last values --------------------------------------------------------------------

    @property
    def sensors(self) -> dict[str, SensorMeta]:
        """The sensors the room's state describes (``org.mxsync.sensor``), by id."""
        return self._values.sensors()

    async def latest(self, sensor: str) -> Reading | None:
        """The newest reading of ``sensor`` this subscriber knows of: seen live,
        in the sensor's state, or in the newest batches of the room."""
        validate_sensor_id(sensor)
        return await self._values.latest(sensor, self._levels.creators)

    # -- history ------------------------------------------------------------------------

    async def history(
        self,
        sensor: str,
        start_ms: int,
        end_ms: int,
        *,
        progress: Callable[[HistoryProgress], object] | None = None,
        lag: float | None = None,
    ) -> list[Reading]:
        """The readings of ``sensor`` with ``start_ms <= t_ms < end_ms``, by time.

        Within ``history_retention`` it answers from the local batch index: every
        reading of the range the room holds, whenever it was uploaded; the index
        is filled by one backwards walk at the first query and by the live
        stream, and a repeated query fetches nothing it has cached.
        ``progress`` is called with a :class:`HistoryProgress` after each batch
        (from the index) or page (a scan). Older ranges are scanned by server
        time, and ``lag`` (seconds)
        overrides ``history_lag``, how long after its time a reading may have
        reached the homeserver.
        """
        validate_sensor_id(sensor)
        check_range(start_ms, end_ms)
        if self._index is not None and self._index.covers(start_ms):
            if end_ms <= start_ms:
                return []
            return await self._index.history(sensor, start_ms, end_ms, progress)
        return await read_history(
            self._client, self._room, sensor, start_ms, end_ms,
            reader=self._reader, skew_ms=self._skew_ms,
            lag_ms=self._lag_ms if lag is None else int(lag * 1000),
            page_size=self._page_size, progress=progress,
        )

    async def window(
        self,
        sensor: str,
        start_ms: int,
        end_ms: int,
        buckets: int,
        *,
        progress: Callable[[HistoryProgress], object] | None = None,
        lag: float | None = None,
    ) -> list[Bucket]:
        """``buckets`` equal buckets over [start_ms, end_ms) with min/max/mean/count."""
        aggregate([], start_ms, max(end_ms, start_ms + 1), buckets)  # check the arguments
        readings = await self.history(sensor, start_ms, end_ms, progress=progress, lag=lag)
        return aggregate(readings, start_ms, end_ms, buckets)

    # -- commands (streams/commands.py) ---------------------------------------------------

    async def command(
        self, device: str, name: str, args: dict[str, Any] | None = None, *,
        timeout: float = 30.0,  # noqa: ASYNC109 - CommandTimeout names the command id
        command_id: str | None = None, expiry: float = DEFAULT_EXPIRY,
    ) -> Any:
        """Run command ``name`` on ``device`` and return its result.

        Raises ForbiddenError if this user may not send commands here,
        CommandFailed (the device answered an error), CommandExpired (not run:
        it reached the device after ``expiry`` seconds) or CommandTimeout (no
        answer in ``timeout`` seconds; call again with the same ``command_id``
        to get the answer: a command id never runs twice).
        """
        return await send_command(self._client, self._room, device, name, args,
                                  timeout=timeout, command_id=command_id, expiry=expiry)

    # -- devices --------------------------------------------------------------------------

    @property
    def devices(self) -> dict[str, DeviceStatus]:
        """The devices of the room, by device id, as this subscriber knows them now."""
        return self._devices.snapshot()

    async def wait_device(self, device: str, *, online: bool) -> DeviceStatus:
        """Return the device's status once it is ``online`` (or offline)."""
        validate_device_id(device)
        return await self._devices.wait(device, online=online)

    def device_changes(self, buffer: int = 256) -> AbstractAsyncContextManager[
        MemoryObjectReceiveStream[DeviceStatus]
    ]:
        """A stream of device status changes (online/offline, new sessions) from now on."""
        return self._devices.changes(buffer)

    def statistics(self) -> SubscriberStatistics:
        return SubscriberStatistics(
            batches=self._batches,
            readings=self._readings,
            duplicates=self._chains.duplicates,
            overlap=self._chains.overlap,
            gaps=self._chains.gaps,
            missing_batches=self._chains.missing,
            repaired_batches=self._chains.repaired,
            malformed=self._reader.malformed,
            forbidden=self._reader.forbidden,
            lost_device_changes=self._devices.lost_changes,
            index_walk_events=0 if self._index is None else self._index.walked_events,
            index_fetched=0 if self._index is None else self._index.fetched,
        )


def _sensors(batch: ReadingsBatch) -> int:
    """How many sensors a batch has readings of."""
    return len({h.sensor for h in batch.series})


def _ends(readings: list[Reading], sensors: int | None) -> tuple[dict[str, Reading],
                                                                   dict[str, Reading]]:
    """The first and the last reading of each sensor in ``readings`` (sorted by
    time: its earliest and its newest, the last of those of one time). With the
    number of sensors known, each scan stops once it has seen them all: for
    sensors that report together, after a few readings at each end."""
    if sensors is None:
        sensors = len(set(map(_sensor, readings)))
    first: dict[str, Reading] = {}
    for r in readings:
        if r.sensor not in first:
            first[r.sensor] = r
            if len(first) == sensors:
                break
    last: dict[str, Reading] = {}
    for r in reversed(readings):
        if r.sensor not in last:
            last[r.sensor] = r
            if len(last) == sensors:
                break
    return first, last


_sensor = attrgetter("sensor")
