"""Publisher: a device's readings into one room, batched, persisted and in order.

Data path of a reading::

    publish() -> buffer (memory, write-behind to stream_chunk every save_interval)
              -> BatchEncoder, fed in publication order
              -> sealed batch (stream_sealed, one transaction with its seq)
              -> outbox (one transaction) -> homeserver

Invariants:
- ``publish`` never awaits and never touches the disk: it validates (raising
  ConfigError at the call) and appends. Everything else runs in the
  publisher's tasks, which need the event loop to get a turn.
- Batches are contiguous runs of the publication order and carry consecutive
  ``seq`` numbers of one ``session``; they leave through one outbox lane, so
  the homeserver stores them in ``seq`` order. A dropped batch (overflow
  policy ``"drop_oldest"``) leaves a visible gap in ``seq``.
- A batch is sealed when it is full (the encoder's byte budget or 65,536
  readings), or, when nothing is in flight, when its oldest reading is
  ``max_age`` old or a flush asks for it. While a batch is in flight new
  readings keep coalescing into the next one: under rate limits batches grow
  instead of queueing up.
- Durability: a reading is in the store at most ``save_interval`` after
  ``publish`` (``await persist()`` makes that point explicit), and from then on
  survives kill -9 and restarts, being sent exactly once (the outbox's txn ids).
  A kill -9 loses at most the readings of the last ``save_interval``.
- Sensor state (``org.mxsync.sensor``) reports only readings the homeserver
  already stores, at most every ``meta_interval`` per sensor and one at a time,
  and waits while sealed batches queue (readings come first; under a backlog
  one update goes out every ``12 * meta_interval``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import TaskGroup

from ..engine.outbox import SendHandle
from ..engine.surface import Engine
from ..engine.taskgroups import exit_stack
from ..errors import BufferFull, ConfigError, MatrixError, MxsyncError
from ..protocol.readings import (
    MIN_BATCH_BYTES,
    BatchEncoder,
    Reading,
    Value,
    validate_device_id,
    validate_precision,
)
from ..protocol.types import MAX_CONTENT_BYTES, READINGS, SENSOR
from . import buffer
from .buffer import Row, SealedRow
from .presence import Presence
from .sensors import SensorInfo, Sensors

__all__ = ["Publisher", "BufferFull", "OverflowPolicy"]

#: How long a cancelled publisher tries to announce "shutdown" before giving up.
_GOODBYE_TIMEOUT = 5.0

log = logging.getLogger("mxsync.streams.publisher")

OverflowPolicy = Literal["block", "drop_oldest"]

_json = msgspec.json.Encoder()
_FEED_SLICE = 8192  # readings fed to the encoder between checkpoints
_POKE_EVERY = 8192  # readings after which publish() wakes the pump
_MARK_EVERY = 0.05  # seconds between arrival marks (the age clock's resolution)


class Publisher:
    """Publishes one device's readings into one room; an async context manager.

    Use ``client.publisher(room_id, device="boiler-1")``. Call :meth:`publish`
    from the event loop's thread (from other threads, through
    ``anyio.from_thread.run_sync``). One publisher per (room, device) and store.

    Keyword arguments (durations in seconds):

    - ``precision``: default decimals of float readings (see :meth:`declare`).
    - ``description``: text of the device's birth certificate.
    - ``max_age`` (1.0): a batch is sent at most this long after its oldest
      reading, unless a batch is in flight (then readings coalesce).
    - ``max_buffered`` (1,000,000) and ``overflow`` ("block" or "drop_oldest"):
      what happens when that many readings wait (see :meth:`publish`).
    - ``meta_interval`` (5.0): least time between two state updates of a sensor.
    - ``presence`` (True): announce the device (birth, shutdown, last will);
      ``last_will`` (True): use the homeserver's delayed events when it has them;
      ``offline_after`` (30.0): the last will's delay; ``heartbeat`` (60.0): the
      refresh interval promised when there is no last will.
    - ``save_interval`` (0.1): write-behind delay, the most a kill -9 can lose.
    - ``window`` (2): batches handed to the outbox at once.
    - ``max_bytes``: JSON budget of one event's content (lower in encrypted rooms).
    - ``close_timeout`` (60.0): how long leaving the ``async with`` block waits
      to deliver everything; the rest stays in the store for the next run.
    """

    def __init__(
        self,
        client: Engine,
        room_id: str,
        device: str,
        *,
        precision: int | None = None,
        description: str | None = None,
        max_age: float = 1.0,
        max_buffered: int = 1_000_000,
        overflow: OverflowPolicy = "block",
        meta_interval: float = 5.0,
        presence: bool = True,
        last_will: bool = True,
        offline_after: float = 30.0,
        heartbeat: float = 60.0,
        save_interval: float = 0.1,
        window: int = 2,
        max_bytes: int = MAX_CONTENT_BYTES,
        close_timeout: float = 60.0,
    ) -> None:
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise ConfigError(f"not a room id: {room_id!r}")
        self._device = validate_device_id(device)
        self._precision = None if precision is None else validate_precision(precision)
        if description is not None and (
            not isinstance(description, str) or len(description.encode()) > 1024
        ):
            raise ConfigError("description must be a str of at most 1024 bytes of UTF-8")
        for name, v, lo in (
            ("max_age", max_age, 0.0),
            ("meta_interval", meta_interval, 0.0),
            ("save_interval", save_interval, 0.0),
            ("close_timeout", close_timeout, 0.0),
        ):
            if not isinstance(v, int | float) or not lo <= v < math.inf:
                raise ConfigError(f"{name} must be a number >= {lo}, got {v!r}")
        if not isinstance(offline_after, int | float) or not 3.0 <= offline_after <= 86_400:
            raise ConfigError(
                f"offline_after must be within 3..86400 seconds, got {offline_after!r}"
            )
        if not isinstance(heartbeat, int | float) or not 1.0 <= heartbeat <= 86_400:
            raise ConfigError(f"heartbeat must be within 1..86400 seconds, got {heartbeat!r}")
        if type(max_buffered) is not int or max_buffered < 1:
            raise ConfigError(f"max_buffered must be an int >= 1, got {max_buffered!r}")
        if overflow not in ("block", "drop_oldest"):
            raise ConfigError(f"overflow must be 'block' or 'drop_oldest', got {overflow!r}")
        if type(window) is not int or not 1 <= window <= 64:
            raise ConfigError(f"window must be an int within 1..64, got {window!r}")
        if type(max_bytes) is not int or not MIN_BATCH_BYTES <= max_bytes <= MAX_CONTENT_BYTES:
            raise ConfigError(
                f"max_bytes must be within {MIN_BATCH_BYTES}..{MAX_CONTENT_BYTES},"
                f" got {max_bytes!r}"
            )
        self._client = client
        self._room = room_id
        self._description = description
        self._max_age = float(max_age)
        self._max_buffered = max_buffered
        self._overflow: OverflowPolicy = overflow
        self._meta_interval = float(meta_interval)
        self._want_presence = presence
        self._last_will = last_will
        self._offline_after = float(offline_after)
        self._heartbeat = float(heartbeat)
        self._save_interval = float(save_interval)
        self._window = window
        self._max_bytes = max_bytes
        self._close_timeout = float(close_timeout)
        self._lane = f"readings/{self._device}"
        self._sensors = Sensors(self._device, self._precision)
        # The buffer: readings not yet sealed, with absolute indexes (see _base).
        self._buf: list[Row] = []
        self._base = 0  # absolute index of _buf[0]
        self._fed = 0  # readings [_base, _fed) are in the encoder
        self._saved = 0  # readings below are in the store
        self._chunks: deque[list[int]] = deque()  # [row id, start, end) per stored chunk
        self._marks: deque[tuple[int, float]] = deque()  # (index, monotonic arrival)
        self._enc = BatchEncoder(max_bytes=max_bytes)
        self._sealed: deque[SealedRow] = deque()
        self._sealed_n = 0
        self._inflight: deque[SealedRow] = deque()
        self._drop_ids: list[int] = []  # dropped sealed batches whose rows are not deleted yet
        self._dropping_new = False
        self._session = 0
        self._next_seq = 0
        self._flush_target = 0
        self._errors: list[MatrixError] = []
        self._io_lock = anyio.Lock()
        self._wake = anyio.Event()
        self._save_wake = anyio.Event()
        self._changed = anyio.Event()
        self._meta_handle: SendHandle | None = None
        self._meta_last = time.monotonic()
        self._last_delivery = time.monotonic()
        self._presence: Presence | None = None
        self._presence_scope: anyio.CancelScope | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._open = False
        # Counters (statistics()).
        self._published = 0
        self._restored = 0
        self._batches_sent = 0
        self._readings_sent = 0
        self._bytes_sent = 0
        self._bytes_sealed = 0
        self._readings_sealed = 0
        self._dropped = 0
        self._dropped_batches = 0
        self._failed = 0
        self._invalid = 0
        self._meta_sent = 0

    def __repr__(self) -> str:
        return f"<Publisher {self._device} in {self._room}>"

    @property
    def device(self) -> str:
        return self._device

    @property
    def room_id(self) -> str:
        return self._room

    @property
    def session(self) -> int:
        return self._session

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Publisher:
        room, device = self._room, self._device
        loaded = await self._client.run_sql(lambda c: buffer.load(c, room, device))
        self._session, self._next_seq = loaded.session, loaded.next_seq
        for sealed in loaded.sealed:
            sealed.start, sealed.end = -1, 0  # older than anything of this run
            self._sealed.append(sealed)
            self._sealed_n += sealed.n
        for cid, rows in loaded.chunks:
            start = len(self._buf)
            self._buf.extend(rows)
            self._chunks.append([cid, start, len(self._buf)])
        self._saved = self._restored = len(self._buf)
        if self._buf:
            self._marks.append((0, time.monotonic()))
        if self._restored or self._sealed:
            log.info("publisher %s: resuming %d buffered reading(s) and %d sealed batch(es)",
                     device, self._restored, len(self._sealed))
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            self._tg = tg
            tg.start_soon(self._pump)
            tg.start_soon(self._saver)
            tg.start_soon(self._meta_loop)
            if self._want_presence:
                self._presence = Presence(
                    self._client, room, device,
                    session=self._session,
                    description=self._description,
                    last_will=self._last_will,
                    offline_after=self._offline_after,
                    heartbeat=self._heartbeat,
                    last_activity=lambda: self._last_delivery,
                    last_seq=lambda: self._next_seq - 1 if self._next_seq else None,
                )
                self._presence_scope = anyio.CancelScope()
                tg.start_soon(self._run_presence, self._presence, self._presence_scope)
            self._open = True
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._open = False
        error: BaseException | None = None
        try:
            if exc_type is None:
                with anyio.move_on_after(self._close_timeout) as scope:
                    try:
                        await self.flush()
                    except MatrixError as e:
                        error = e
                    if self._presence_scope is not None:
                        self._presence_scope.cancel()
                    if self._presence is not None:
                        await self._presence.shutdown()
                    await self._send_meta(final=True)
                if scope.cancelled_caught:
                    log.warning(
                        "publisher %s closed before everything was sent (close_timeout %.0fs);"
                        " the rest stays in the store for the next run", self._device,
                        self._close_timeout,
                    )
            elif self._presence is not None:
                # Cancelled (Ctrl-C under anyio) or failed: unsent readings stay in the
                # store, but the device still says goodbye at once rather than waiting
                # for its last will. Shielded and bounded: the client's own tasks may
                # be going down in the same cancellation.
                with anyio.CancelScope(shield=True), anyio.move_on_after(
                    min(_GOODBYE_TIMEOUT, self._close_timeout)
                ):
                    if self._presence_scope is not None:
                        self._presence_scope.cancel()
                    await self._presence.shutdown()
        finally:
            if self._presence_scope is not None:
                self._presence_scope.cancel()
            stack, self._stack = self._stack, None
            with anyio.CancelScope(shield=True):
                try:
                    await self._save()
                except RuntimeError as e:  # the store is closed: the client exited first
                    log.error("publisher %s: could not save its buffer: %s", self._device, e)
            if stack is not None:
                await exit_stack(stack, exc_type, exc, tb)
        if error is not None:
            raise error
        return None

    async def _run_presence(self, presence: Presence, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await presence.run()
            except MxsyncError as exc:
                log.error("publisher %s: presence stopped: %s", self._device, exc)

    # -- declaring and publishing ------------------------------------------------

    def declare(
        self,
        sensor: str,
        *,
        precision: int | None = None,
        unit: str | None = None,
        name: str | None = None,
    ) -> None:
        """Set a sensor's float precision (decimals, 0..9), default unit and name.

        A float is rounded to ``precision`` decimals and comes back exactly so
        rounded. ``None`` takes the publisher's ``precision``; with none there
        either, a float travels as its shortest exact decimal (at most 9 places).
        """
        self._sensors.declare(sensor, precision=precision, unit=unit, name=name)

    def publish(
        self,
        sensor: str,
        value: Value,
        *,
        t: int | None = None,
        unit: str | None = None,
    ) -> None:
        """Buffer one reading; never blocks.

        ``value`` is an int, float, bool or str (at most 256 bytes of UTF-8);
        ``t`` is its time in ms since the epoch (default: now, never going
        back); ``unit`` defaults to the sensor's declared unit. Raises
        ConfigError for an invalid argument (nothing is buffered), and
        :class:`BufferFull` when ``max_buffered`` readings wait (policy "block").
        With policy "drop_oldest" the oldest sealed batches make room; should the
        buffer still reach twice ``max_buffered`` (a producer that never lets the
        event loop run the publisher's tasks), the new reading is dropped instead.
        Dropped readings are counted (``statistics()["dropped"]``) and leave a gap
        in ``seq`` that subscribers see.
        """
        if not self._open:
            raise RuntimeError("the publisher is not running; use `async with`")
        s = self._sensors.get(sensor)
        row = self._sensors.row(sensor, s, value, t, unit)
        if self._room_for(1):
            self._append(row, s)

    def publish_many(self, readings: Iterable[Reading]) -> int:
        """Buffer several readings (each with its ``t_ms``); all or nothing.

        Returns how many were buffered (0 if the overflow policy dropped them).
        Raises like :meth:`publish`.
        """
        if not self._open:
            raise RuntimeError("the publisher is not running; use `async with`")
        rows: list[tuple[Row, SensorInfo]] = []
        for r in readings:
            if type(r) is not Reading:
                raise ConfigError(f"publish_many takes Reading objects, not {type(r).__name__}")
            s = self._sensors.get(r.sensor)
            rows.append((self._sensors.row(r.sensor, s, r.value, r.t_ms, r.unit), s))
        if not self._room_for(len(rows)):
            return 0
        for row, s in rows:
            self._append(row, s)
        return len(rows)

    async def publish_wait(
        self,
        sensor: str,
        value: Value,
        *,
        t: int | None = None,
        unit: str | None = None,
    ) -> None:
        """Like :meth:`publish`, but wait for room instead of raising BufferFull."""
        while True:
            try:
                self.publish(sensor, value, t=t, unit=unit)
                return
            except BufferFull:
                await self._changed.wait()

    def _room_for(self, n: int) -> bool:
        """Make room for n readings by the overflow policy; False: drop them."""
        buffered = len(self._buf) + self._sealed_n
        if buffered + n <= self._max_buffered:
            self._dropping_new = False
            return True
        if self._overflow == "block":
            raise BufferFull(
                f"publisher {self._device}: {buffered} readings wait to be sent"
                f" (max_buffered={self._max_buffered}); use publish_wait() or flush()"
            )
        self._drop_sealed(buffered + n - self._max_buffered)
        self._wake.set()
        buffered = len(self._buf) + self._sealed_n
        if buffered + n <= 2 * self._max_buffered:
            self._dropping_new = False
            return True
        # Only sealed batches can be dropped and only the pump seals, when the event
        # loop gives it a turn; a producer that outruns it loses its newest readings.
        # They get a seq of their own that is never sent, so subscribers see the gap.
        if not self._dropping_new:
            self._dropping_new = True
            self._next_seq += 1
            self._dropped_batches += 1
            log.warning("publisher %s: the pump cannot keep up; dropping new readings",
                        self._device)
        self._dropped += n
        return False

    def _append(self, row: Row, s: SensorInfo) -> None:
        index = self._base + len(self._buf)
        if not self._buf:
            self._wake.set()
        elif (index - self._fed) % _POKE_EVERY == 0:
            self._wake.set()
        if index <= self._saved:
            self._save_wake.set()
        self._buf.append(row)
        now = time.monotonic()
        if not self._marks or now - self._marks[-1][1] >= _MARK_EVERY:
            self._marks.append((index, now))
        s.last = row
        s.last_index = index
        self._published += 1

    # -- durability points ---------------------------------------------------------

    async def persist(self) -> None:
        """Return once every reading published before is in the local store
        (it then survives kill -9 and restarts)."""
        target = self._base + len(self._buf)
        while self._saved < target:
            self._save_wake.set()
            await self._changed.wait()

    async def flush(self) -> None:
        """Return once every reading published before is stored on the homeserver.

        Readings dropped by the overflow policy count as settled. Raises the
        homeserver's refusal (e.g. ForbiddenError) if a batch was refused.
        """
        target = self._base + len(self._buf)
        self._flush_target = max(self._flush_target, target)
        self._wake.set()
        while not self._settled(target):
            await self._changed.wait()
        if self._errors:
            error = self._errors[0]
            self._errors.clear()
            raise error

    def _settled(self, target: int) -> bool:
        if self._base < target:
            return False
        return all(b.start >= target for b in self._inflight) and all(
            b.start >= target for b in self._sealed
        )

    def _settled_below(self) -> int:
        """Every reading with an index below this is stored, dropped or refused."""
        low = self._base
        for b in self._inflight:
            low = min(low, b.start)
        for b in self._sealed:
            low = min(low, b.start)
        return low

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- the pump: encoder -> sealed batches -> outbox ------------------------------

    async def _pump(self) -> None:
        while True:
            wake = self._wake = anyio.Event()
            await self._seal(force=False)
            if self._drop_ids or (
                self._overflow == "drop_oldest"
                and len(self._buf) + self._sealed_n > self._max_buffered
            ):
                await self._drop_oldest()
            if not self._inflight and not self._sealed and self._buf and (
                self._aged() or self._flush_target > self._base
            ):
                await self._seal(force=True)
            while self._sealed and len(self._inflight) < self._window:
                await self._send_oldest()
            timeout = math.inf
            if self._buf and not self._inflight and not self._sealed:
                timeout = max(0.0, self._arrival() + self._max_age - time.monotonic())
            with anyio.move_on_after(timeout):
                await wake.wait()

    def _arrival(self) -> float:
        """When the oldest unsealed reading was published (monotonic)."""
        marks = self._marks
        while len(marks) > 1 and marks[1][0] <= self._base:
            marks.popleft()
        return marks[0][1] if marks else time.monotonic()

    def _aged(self) -> bool:
        return time.monotonic() - self._arrival() >= self._max_age

    async def _feed(self, limit: int) -> bool:
        """Feed readings up to index ``limit`` to the encoder, stopping when it is
        full; returns whether it is."""
        enc = self._enc
        while self._fed < limit:
            i = self._fed - self._base
            for row in self._buf[i : min(limit - self._base, i + _FEED_SLICE)]:
                self._fed += 1
                try:
                    enc.add(row[0], row[1], row[2], unit=row[3], precision=row[4])
                except ConfigError as exc:
                    # Only a damaged store can get here: publish() validated the row.
                    self._invalid += 1
                    log.error("publisher %s: skipping an invalid buffered reading: %s",
                              self._device, exc)
                    continue
                if enc.would_overflow():
                    return True
            await anyio.lowlevel.checkpoint()
            enc = self._enc
        return enc.would_overflow()

    async def _seal(self, *, force: bool) -> None:
        """Seal every full batch (and with ``force`` the rest) and commit them."""
        limit = self._base + len(self._buf)
        out: list[tuple[int, int, bytes]] = []
        cursor = self._base
        while True:
            full = await self._feed(limit if force else self._base + len(self._buf))
            if not full and not (force and len(self._enc)):
                break
            seq = self._next_seq
            n = self._fed - cursor
            content = self._enc.encode(self._device, seq, session=self._session)
            if len(self._enc):
                # The encoder's estimate was off and it left readings behind, not
                # necessarily the newest: re-encode a shorter prefix in order.
                content, n = self._encode_prefix(cursor, max(1, (n - len(self._enc)) * 15 // 16),
                                                 seq)
            self._enc = BatchEncoder(max_bytes=self._max_bytes)
            cursor += n
            self._fed = cursor
            self._next_seq = seq + 1
            out.append((seq, n, _json.encode(content)))
            if not full and self._fed >= limit:
                break
        if out:
            await self._commit(out, cursor)

    def _encode_prefix(self, cursor: int, k: int, seq: int) -> tuple[dict[str, Any], int]:
        i = cursor - self._base
        while True:
            enc = BatchEncoder(max_bytes=self._max_bytes)
            for row in self._buf[i : i + k]:
                try:
                    enc.add(row[0], row[1], row[2], unit=row[3], precision=row[4])
                except ConfigError:
                    continue
            content = enc.encode(self._device, seq, session=self._session)
            if not len(enc):
                return content, k
            k = max(1, k * 7 // 8)

    async def _commit(self, out: list[tuple[int, int, bytes]], end: int) -> None:
        room, device, next_seq = self._room, self._device, self._next_seq
        async with self._io_lock:
            delete = [c[0] for c in self._chunks if c[2] <= end]
            rewrite: tuple[int, list[Row]] | None = None
            cut = None
            for c in self._chunks:
                if c[1] < end < c[2]:
                    cut = c
                    rewrite = (c[0], self._buf[end - self._base : c[2] - self._base])
            ids = await self._client.run_sql(
                lambda conn: buffer.seal(conn, room, device, out, delete, rewrite, next_seq)
            )
            while self._chunks and self._chunks[0][2] <= end:
                self._chunks.popleft()
            if cut is not None:
                cut[1] = end
            start = self._base
            for row_id, (seq, n, content) in zip(ids, out, strict=True):
                self._sealed.append(SealedRow(row_id, seq, n, content, start + n, start))
                self._sealed_n += n
                self._bytes_sealed += len(content)
                self._readings_sealed += n
                start += n
            del self._buf[: end - self._base]
            self._base = end
            self._saved = max(self._saved, end)
        self._notify()

    async def _send_oldest(self) -> None:
        # Taken out of _sealed before the await, so that publish() cannot drop it.
        sealed = self._sealed.popleft()
        self._sealed_n -= sealed.n
        self._inflight.append(sealed)
        entry = self._client.new_entry(self._room, READINGS, sealed.content, lane=self._lane)
        _, (handle,) = await self._client.stage(lambda tx: buffer.to_outbox(tx, sealed.id, entry))
        assert self._tg is not None
        self._tg.start_soon(self._delivered, sealed, handle)
        self._notify()

    async def _delivered(self, sealed: SealedRow, handle: SendHandle) -> None:
        try:
            await handle.wait()
        except MatrixError as exc:
            self._failed += sealed.n
            if len(self._errors) < 16:
                self._errors.append(exc)
            log.error("publisher %s: batch %d (%d readings) refused by the homeserver: %s",
                      self._device, sealed.seq, sealed.n, exc)
        else:
            self._batches_sent += 1
            self._readings_sent += sealed.n
            self._bytes_sent += len(sealed.content)
            self._last_delivery = time.monotonic()
        self._inflight.remove(sealed)
        self._wake.set()
        self._notify()

    def _drop_sealed(self, over: int) -> None:
        """Drop the oldest sealed batches until ``over`` readings are gone (or none is
        left). Their rows are deleted by the pump; a crash before that brings them
        back, which loses nothing."""
        first = not self._dropped
        while over > 0 and self._sealed:
            victim = self._sealed.popleft()
            self._sealed_n -= victim.n
            over -= victim.n
            self._dropped += victim.n
            self._dropped_batches += 1
            self._drop_ids.append(victim.id)
            self._wake.set()
        if first and self._dropped:
            log.warning("publisher %s: buffer full (max_buffered=%d), dropping the oldest"
                        " readings", self._device, self._max_buffered)

    async def _drop_oldest(self) -> None:
        await self._seal(force=True)
        self._drop_sealed(len(self._buf) + self._sealed_n - self._max_buffered)
        if self._drop_ids:
            ids, self._drop_ids = self._drop_ids, []
            await self._client.run_sql(lambda c: buffer.drop_sealed(c, ids))
            self._notify()

    # -- write-behind -----------------------------------------------------------------

    async def _saver(self) -> None:
        while True:
            self._save_wake = anyio.Event()
            if self._base + len(self._buf) <= self._saved:
                await self._save_wake.wait()
                self._save_wake = anyio.Event()
            with anyio.move_on_after(self._save_interval):
                await self._save_wake.wait()
            await self._save()

    async def _save(self) -> None:
        room, device = self._room, self._device
        async with self._io_lock:
            start = max(self._saved, self._base)
            end = self._base + len(self._buf)
            if end <= start:
                return
            rows = self._buf[start - self._base : end - self._base]
            cid = await self._client.run_sql(
                lambda c: buffer.append_chunk(c, room, device, rows)
            )
            self._chunks.append([cid, start, end])
            self._saved = end
        self._notify()

    # -- sensor state ---------------------------------------------------------------------

    async def _meta_loop(self) -> None:
        tick = min(1.0, max(0.05, self._meta_interval / 4))
        while True:
            await anyio.sleep(tick)
            await self._send_meta(final=False)

    async def _send_meta(self, *, final: bool) -> None:
        """One sensor state update (all due ones when ``final``)."""
        if self._meta_handle is not None and not self._meta_handle.done and not final:
            return
        now = time.monotonic()
        if self._sealed and not final and now - self._meta_last < self._meta_interval * 12:
            return  # readings first, but a long backlog does not freeze the last values
        handles = []
        for sensor, content in self._sensors.updates(
            now, self._meta_interval, self._settled_below(), final=final
        ):
            handle = await self._client.send(
                self._room, SENSOR, content, state_key=sensor, lane=f"meta/{self._device}"
            )
            self._meta_handle = handle
            self._meta_sent += 1
            self._meta_last = now
            handles.append(handle)
        for handle in handles if final else ():
            try:
                await handle.wait()
            except MatrixError as exc:
                log.warning("publisher %s: sensor state refused: %s", self._device, exc)

    # -- observing ------------------------------------------------------------------------

    async def wait_online(self) -> None:
        """Return once the device's birth is stored and its last will (if the
        homeserver serves delayed events) is armed."""
        if self._presence is None:
            raise RuntimeError("this publisher announces no presence (presence=False)")
        await self._presence.ready.wait()

    @property
    def presence_mode(self) -> str | None:
        """"will" (MSC4140 last will), "heartbeat", or None (not known yet / off)."""
        return None if self._presence is None else self._presence.mode

    @property
    def buffered(self) -> int:
        """Readings waiting in this publisher (not yet handed to the outbox)."""
        return len(self._buf) + self._sealed_n

    def statistics(self) -> dict[str, Any]:
        return {
            "published": self._published,
            "restored": self._restored,
            "buffered": self.buffered,
            "unsaved": self._base + len(self._buf) - max(self._saved, self._base),
            "unsealed": len(self._buf),
            "sealed_pending": len(self._sealed),
            "in_flight": len(self._inflight),
            "batches_sent": self._batches_sent,
            "readings_sent": self._readings_sent,
            "bytes_sent": self._bytes_sent,
            "bytes_per_reading": (
                self._bytes_sealed / self._readings_sealed if self._readings_sealed else 0.0
            ),
            "dropped": self._dropped,
            "dropped_batches": self._dropped_batches,
            "failed": self._failed,
            "invalid": self._invalid,
            "meta_sent": self._meta_sent,
            "session": self._session,
            "next_seq": self._next_seq,
            "presence": self.presence_mode,
        }
