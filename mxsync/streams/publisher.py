"""Publisher: a device's readings into one room, batched, persisted and in order.

This module is the public API. :class:`Publisher` owns the lifecycle (its task
group, presence, open or not) and hands the rest to the parts that own their
state: ``config`` (the checked settings), ``sensors`` (declarations, checks,
last values), ``pump`` (buffer, encoder, sealed and in-flight batches, the
write-behind saver) and ``meta`` (sensor state updates).

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
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import msgspec

from ..engine.surface import Engine
from ..engine.taskgroups import StackOwner
from ..errors import BufferFull, ConfigError, MatrixError, MxsyncError
from ..protocol.readings import Reading, Value
from .buffer import Row
from .commands import Command, CommandInbox, iterate
from .config import OverflowPolicy, PublisherConfig
from .meta import SensorState
from .presence import Presence
from .pump import Pump
from .sensors import SensorInfo, Sensors

__all__ = ["Publisher", "PublisherStatistics", "BufferFull", "OverflowPolicy"]

#: How long a cancelled publisher tries to announce "shutdown" before giving up.
_GOODBYE_TIMEOUT = 5.0

log = logging.getLogger("mxsync.streams.publisher")


class PublisherStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Publisher.statistics` reports (counts of readings unless named)."""

    #: Readings accepted by publish() / publish_many() in this run.
    published: int
    #: Unsealed readings a previous run left in the store, resumed at start.
    restored: int
    #: Readings not yet handed to the outbox (unsealed and sealed).
    buffered: int
    #: Readings not yet in the local store (at most ``save_interval`` old).
    unsaved: int
    #: Readings not yet sealed into a batch.
    unsealed: int
    #: Sealed batches waiting for the outbox.
    sealed_pending: int
    #: Batches in the outbox, not yet stored by the homeserver (a previous
    #: run's included: see ``resumed_in_outbox``).
    in_flight: int
    #: Batches the homeserver stored.
    batches_sent: int
    #: Readings in the batches the homeserver stored.
    readings_sent: int
    #: JSON bytes of the batches the homeserver stored.
    bytes_sent: int
    #: JSON bytes per reading over every batch sealed in this run (0.0 before any).
    bytes_per_reading: float
    #: Readings dropped by the overflow policy "drop_oldest".
    dropped: int
    #: Batches (seq numbers) dropped by the overflow policy: gaps subscribers see.
    dropped_batches: int
    #: Readings in batches the homeserver refused.
    failed: int
    #: Buffered readings the encoder refused (only a damaged store gives any).
    invalid: int
    #: Sensor state updates handed to the outbox.
    meta_sent: int
    #: This device's session number.
    session: int
    #: The seq number the next batch gets.
    next_seq: int
    #: "will", "heartbeat", or None (not known yet, or presence off).
    presence: str | None
    #: Last-will restarts the homeserver answered, restarts that failed (retried),
    #: and wills that fired while the device lived (each answered by a new birth).
    will_restarts: int = 0
    will_restart_failures: int = 0
    will_rebirths: int = 0
    #: Batches a previous run had handed to the outbox and found there unsent at
    #: start (kill -9, close_timeout): ``flush()`` waits for them too; they are
    #: not counted in ``batches_sent`` / ``readings_sent`` (this run's).
    resumed_in_outbox: int = 0


class Publisher(StackOwner):
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
    - ``max_bytes``: JSON budget of one event's content (lowered to
      ``MAX_ENCRYPTED_CONTENT_BYTES`` in encrypted rooms).
    - ``last_values`` (None): report last values in ``org.mxsync.sensor`` state;
      None means in cleartext rooms only (state is never encrypted).
    - ``close_timeout`` (60.0): how long leaving the ``async with`` block waits
      to deliver everything; the rest stays in the store for the next run.
    """

    def __init__(self, client: Engine, room_id: str, device: str, **options: Any) -> None:
        # The keyword arguments (listed above) are PublisherConfig.build's: checked there.
        self._cfg = cfg = PublisherConfig.build(room_id, device, **options)
        self._client = client
        self._sensors = Sensors(cfg.device, cfg.precision)
        self._pump = Pump(client, cfg)
        self._meta = SensorState(client, cfg, self._sensors, self._pump)
        self._presence: Presence | None = None
        self._inbox = CommandInbox(client, cfg.room_id, cfg.device, rebirth=self._rebirth,
                                   look_back=cfg.command_look_back) if cfg.commands else None
        self._presence_scope: anyio.CancelScope | None = None
        self._open = False

    def __repr__(self) -> str:
        return f"<Publisher {self._cfg.device} in {self._cfg.room_id}>"

    @property
    def device(self) -> str:
        return self._cfg.device

    @property
    def room_id(self) -> str:
        return self._cfg.room_id

    @property
    def session(self) -> int:
        return self._pump.session

    # -- lifecycle -----------------------------------------------------------

    async def _setup(self, stack: AsyncExitStack) -> None:
        cfg, pump = self._cfg, self._pump
        await pump.restore()
        if cfg.last_values is None:
            self._meta.enabled = not await self._client.is_encrypted(cfg.room_id)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        pump.start(tg)
        tg.start_soon(self._meta.run)
        if cfg.presence:
            self._presence = Presence(
                self._client, cfg.room_id, cfg.device,
                session=pump.session,
                description=cfg.description,
                last_will=cfg.last_will,
                offline_after=cfg.offline_after,
                heartbeat=cfg.heartbeat,
                last_activity=lambda: pump.last_delivery,
                last_seq=lambda: pump.next_seq - 1 if pump.next_seq else None,
            )
            self._presence_scope = anyio.CancelScope()
            tg.start_soon(self._run_presence, self._presence, self._presence_scope)
        if self._inbox is not None:
            await tg.start(self._inbox.run)
        self._open = True

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
                with anyio.move_on_after(self._cfg.close_timeout) as scope:
                    try:
                        await self.flush()
                    except MatrixError as e:
                        error = e
                    if self._presence_scope is not None:
                        self._presence_scope.cancel()
                    if self._presence is not None:
                        await self._presence.shutdown()
                    await self._meta.send(final=True)
                if scope.cancelled_caught:
                    log.warning(
                        "publisher %s closed before everything was sent (close_timeout %.0fs);"
                        " the rest stays in the store for the next run", self._cfg.device,
                        self._cfg.close_timeout,
                    )
            elif self._presence is not None:
                # Cancelled (Ctrl-C under anyio) or failed: unsent readings stay in the
                # store, but the device still says goodbye at once rather than waiting
                # for its last will. Shielded and bounded: the client's own tasks may
                # be going down in the same cancellation.
                with anyio.CancelScope(shield=True), anyio.move_on_after(
                    min(_GOODBYE_TIMEOUT, self._cfg.close_timeout)
                ):
                    if self._presence_scope is not None:
                        self._presence_scope.cancel()
                    await self._presence.shutdown()
        finally:
            if self._presence_scope is not None:
                self._presence_scope.cancel()
            with anyio.CancelScope(shield=True):
                try:
                    await self._pump.save()
                except RuntimeError as e:  # the store is closed: the client exited first
                    log.error("publisher %s: could not save its buffer: %s", self._cfg.device, e)
            await super().__aexit__(exc_type, exc, tb)
        if error is not None:
            raise error
        return None

    async def _run_presence(self, presence: Presence, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await presence.run()
            except MxsyncError as exc:
                log.error("publisher %s: presence stopped: %s", self._cfg.device, exc)

    # -- commands (streams/commands.py) ------------------------------------------------

    def commands(self) -> AsyncIterator[Command]:
        """``async for cmd in pub.commands()``: the commands for this device, each
        once; answer with ``await cmd.ok(result)`` or ``await cmd.fail(text)``.
        "rebirth" is answered by the publisher itself and never comes out here."""
        if self._inbox is None:
            raise RuntimeError("this publisher takes no commands (commands=False)")
        return iterate(self._inbox.commands())

    async def _rebirth(self) -> None:
        """Announce the device, its sensors and their last values again."""
        self._sensors.rebirth()
        if self._presence is not None:
            await self._presence.rebirth()
        await self._meta.send(final=True)

    # -- declaring and publishing ------------------------------------------------

    def declare(
        self,
        sensor: str,
        *,
        precision: int | None = None,
        unit: str | None = None,
        name: str | None = None,
        kind: str | None = None,
        values: Iterable[str] | None = None,
    ) -> None:
        """Set a sensor's kind, float precision (decimals, 0..9), default unit and name.

        A float is rounded to ``precision`` decimals and comes back exactly so
        rounded. ``None`` takes the publisher's ``precision``; with none there
        either, a float travels as its shortest exact decimal (at most 9 places).

        ``kind`` is what the sensor measures: ``"number"`` (int or float; the
        only kind ``window`` aggregates), ``"boolean"``, ``"enum"`` (a str among
        ``values``), ``"text"`` (any str) or ``"counter"`` (an int >= 0 that never
        goes down in one run). Undeclared, a sensor's kind is inferred from its
        first reading (number, boolean or text) and fixed from then on. A reading
        of another kind raises ConfigError naming the sensor, its kind and the value.
        """
        self._sensors.declare(sensor, precision=precision, unit=unit, name=name, kind=kind,
                              values=values)

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
        Dropped readings are counted (``statistics().dropped``) and leave a gap
        in ``seq`` that subscribers see.
        """
        if not self._open:
            raise RuntimeError("the publisher is not running; use `async with`")
        sensors = self._sensors
        s = sensors.known(sensor) or sensors.get(sensor)
        row = sensors.row(sensor, s, value, t, unit)
        index = self._pump.push(row)
        if index >= 0:
            s.last = row
            s.last_index = index

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
        pump = self._pump
        if not pump.room_for(len(rows)):
            return 0
        for row, s in rows:
            s.last = row
            s.last_index = pump.append(row)
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
                await self._pump.wait_changed()

    # -- durability points ---------------------------------------------------------

    async def persist(self) -> None:
        """Return once every reading published before is in the local store
        (it then survives kill -9 and restarts)."""
        await self._pump.persist()

    async def flush(self) -> None:
        """Return once every reading published before is stored on the homeserver,
        those published before a restart (kill -9 included) too: the batches a
        previous run had sealed, or handed to the outbox and not seen sent.

        Readings dropped by the overflow policy count as settled. Raises the
        homeserver's refusal (e.g. ForbiddenError) if a batch was refused.
        """
        await self._pump.flush()

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
        return self._pump.buffered

    def statistics(self) -> PublisherStatistics:
        pump = self._pump
        return PublisherStatistics(
            published=pump.published,
            restored=pump.restored,
            buffered=pump.buffered,
            unsaved=pump.unsaved,
            unsealed=pump.unsealed,
            sealed_pending=pump.sealed_pending,
            in_flight=pump.in_flight,
            batches_sent=pump.batches_sent,
            readings_sent=pump.readings_sent,
            bytes_sent=pump.bytes_sent,
            bytes_per_reading=(
                pump.bytes_sealed / pump.readings_sealed if pump.readings_sealed else 0.0
            ),
            dropped=pump.dropped,
            dropped_batches=pump.dropped_batches,
            failed=pump.failed,
            invalid=pump.invalid,
            meta_sent=self._meta.sent,
            session=pump.session,
            next_seq=pump.next_seq,
            presence=self.presence_mode,
            will_restarts=0 if self._presence is None else self._presence.restarts,
            will_restart_failures=0 if self._presence is None else self._presence.restart_failures,
            will_rebirths=0 if self._presence is None else self._presence.rebirths,
            resumed_in_outbox=pump.resumed_in_outbox,
        )
