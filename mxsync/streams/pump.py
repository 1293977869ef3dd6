"""The publisher's pump: readings from the in-memory buffer to the outbox, in order.

It owns the send path's state: the buffer of unsealed readings (with absolute
indexes), the BatchEncoder being fed, the write-behind marks (what is in the
store's ``stream_chunk``), the sealed batches waiting for the outbox and those
in flight (with the batches a previous run had handed to the outbox and that
are still there: ``Engine.pending_sends`` of the device's lane, found at
start), ``session`` and ``next_seq``, the refusals a flush raises, and the
counters of all that. ``buffer`` (SQL functions) is its store; it runs them
through ``Engine.run_sql`` and ``Engine.stage`` only.

Invariants (see also ``publisher``):
- ``append`` never awaits and never touches the disk; everything else runs in
  the pump's two tasks (``_pump`` and ``_saver``) or in the awaiting caller.
- Indexes: ``_buf[0]`` has index ``_base``; readings in ``[_base, _fed)`` are in
  the encoder, those below ``_saved`` are in the store. Sealing removes a
  prefix of ``_buf`` and moves ``_base`` in the transaction that writes the
  batches (``buffer.seal``), so a reading is in exactly one place at every commit.
- Batches carry consecutive ``seq`` numbers and leave through one outbox lane;
  a dropped batch (``"drop_oldest"``) leaves a visible gap in ``seq``.
- A batch is sealed when it is full (the encoder's byte budget or 65,536
  readings), or, when nothing is in flight, when its oldest reading is
  ``max_age`` old or a flush asks for it. While a batch is in flight new
  readings keep coalescing into the next one.
- A flush waits for every batch of the device's lane in the outbox, those of
  a run killed before they were sent included: after a restart they are the
  oldest readings, and the lane sends them first.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import TaskGroup

from ..engine.outbox import SendHandle
from ..engine.surface import Engine
from ..errors import BufferFull, ConfigError, MatrixError
from ..protocol.readings import BatchEncoder
from ..protocol.types import READINGS
from . import buffer
from .buffer import Row, SealedRow
from .config import PublisherConfig

__all__ = ["Pump"]

log = logging.getLogger("mxsync.streams.publisher")

_json = msgspec.json.Encoder()
_FEED_SLICE = 8192  # readings fed to the encoder between checkpoints
_POKE_EVERY = 8192  # readings after which append() wakes the pump
_MARK_EVERY = 0.05  # seconds between arrival marks (the age clock's resolution)


def _ignore(index: int, exc: ConfigError) -> None:
    """Invalid rows were counted and logged when they were first fed."""


class Pump:
    """Buffer, encoder, sealing, committing and sending of one publisher."""

    def __init__(self, client: Engine, config: PublisherConfig) -> None:
        self._client = client
        self._cfg = config
        # The buffer: readings not yet sealed, with absolute indexes (see _base).
        self._buf: list[Row] = []
        self._base = 0  # absolute index of _buf[0]
        self._fed = 0  # readings [_base, _fed) are in the encoder
        self._saved = 0  # readings below are in the store
        self._chunks: deque[list[int]] = deque()  # [row id, start, end) per stored chunk
        self._marks: deque[tuple[int, float]] = deque()  # (index, monotonic arrival)
        #: JSON bytes per batch: the configured budget, lowered in an encrypted room.
        self.max_bytes = config.max_bytes
        self._enc = BatchEncoder(max_bytes=self.max_bytes)
        self._sealed: deque[SealedRow] = deque()
        self._sealed_n = 0
        self._inflight: deque[SealedRow] = deque()
        #: Batches a previous run handed to the outbox, not yet answered (they
        #: precede every batch of this run on the lane; counted as in flight).
        self._carried: list[SendHandle] = []
        self._drop_ids: list[int] = []  # dropped sealed batches whose rows are not deleted yet
        self._dropping_new = False
        self.session = 0
        self.next_seq = 0
        self._flush_target = 0
        self._errors: list[MatrixError] = []
        self._io_lock = anyio.Lock()
        self._wake = anyio.Event()
        self._save_wake = anyio.Event()
        self._changed = anyio.Event()
        self._tg: TaskGroup | None = None
        #: When a batch was last stored by the homeserver (monotonic).
        self.last_delivery = time.monotonic()
        # Counters (Publisher.statistics()).
        self.published = 0
        self.restored = 0
        self.batches_sent = 0
        self.readings_sent = 0
        self.bytes_sent = 0
        self.bytes_sealed = 0
        self.readings_sealed = 0
        self.dropped = 0
        self.dropped_batches = 0
        self.failed = 0
        self.invalid = 0
        self.resumed_in_outbox = 0

    # -- starting -------------------------------------------------------------------

    async def restore(self) -> None:
        """Load what a previous run left in the store (before :meth:`start`)."""
        room, device = self._cfg.room_id, self._cfg.device
        self.max_bytes = min(self._cfg.max_bytes, await self._client.content_budget(room))
        self._enc = BatchEncoder(max_bytes=self.max_bytes)
        loaded = await self._client.run_sql(lambda c: buffer.load(c, room, device))
        self.session, self.next_seq = loaded.session, loaded.next_seq
        for sealed in loaded.sealed:
            sealed.start, sealed.end = -1, 0  # older than anything of this run
            self._sealed.append(sealed)
            self._sealed_n += sealed.n
        for cid, rows in loaded.chunks:
            start = len(self._buf)
            self._buf.extend(rows)
            self._chunks.append([cid, start, len(self._buf)])
        self._saved = self.restored = len(self._buf)
        if self._buf:
            self._marks.append((0, time.monotonic()))
        self._carried = self._client.pending_sends(room, self._cfg.lane)
        self.resumed_in_outbox = len(self._carried)
        if self.restored or self._sealed or self._carried:
            log.info("publisher %s: resuming %d buffered reading(s), %d sealed batch(es) and"
                     " %d batch(es) in the outbox", device, self.restored, len(self._sealed),
                     len(self._carried))

    def start(self, tg: TaskGroup) -> None:
        """Run the pump and the saver in ``tg`` (deliveries are awaited there too)."""
        self._tg = tg
        for handle in self._carried:
            tg.start_soon(self._carried_delivered, handle)
        tg.start_soon(self._pump)
        tg.start_soon(self._saver)

    # -- observing ------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Readings not yet handed to the outbox (unsealed and sealed)."""
        return len(self._buf) + self._sealed_n

    @property
    def unsaved(self) -> int:
        return self._base + len(self._buf) - max(self._saved, self._base)

    @property
    def unsealed(self) -> int:
        return len(self._buf)

    @property
    def sealed_pending(self) -> int:
        return len(self._sealed)

    @property
    def in_flight(self) -> int:
        return len(self._inflight) + len(self._carried)

    def settled_below(self) -> int:
        """Every reading with an index below this is stored, dropped or refused."""
        low = self._base
        for b in self._inflight:
            low = min(low, b.start)
        for b in self._sealed:
            low = min(low, b.start)
        return low

    async def wait_changed(self) -> None:
        """Return at the next change of the buffer (saved, sealed, sent, dropped)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- taking readings --------------------------------------------------------------

    def room_for(self, n: int) -> bool:
        """Make room for n readings by the overflow policy; False: drop them."""
        cfg = self._cfg
        buffered = len(self._buf) + self._sealed_n
        if buffered + n <= cfg.max_buffered:
            self._dropping_new = False
            return True
        if cfg.overflow == "block":
            raise BufferFull(
                f"publisher {cfg.device}: {buffered} readings wait to be sent"
                f" (max_buffered={cfg.max_buffered}); use publish_wait() or flush()"
            )
        self._drop_sealed(buffered + n - cfg.max_buffered)
        self._wake.set()
        buffered = len(self._buf) + self._sealed_n
        if buffered + n <= 2 * cfg.max_buffered:
            self._dropping_new = False
            return True
        # Only sealed batches can be dropped and only the pump seals, when the event
        # loop gives it a turn; a producer that outruns it loses its newest readings.
        # They get a seq of their own that is never sent, so subscribers see the gap.
        if not self._dropping_new:
            self._dropping_new = True
            self.next_seq += 1
            self.dropped_batches += 1
            log.warning("publisher %s: the pump cannot keep up; dropping new readings",
                        cfg.device)
        self.dropped += n
        return False

    def push(self, row: Row) -> int:
        """:meth:`room_for` one reading and :meth:`append` it, in one call (the
        hot path of publish()); returns its index, or -1 if it was dropped."""
        buf = self._buf
        n = len(buf)
        if n + self._sealed_n >= self._cfg.max_buffered:
            if not self.room_for(1):
                return -1
            n = len(buf)
        elif self._dropping_new:
            self._dropping_new = False
        index = self._base + n
        if not n or (index - self._fed) % _POKE_EVERY == 0:
            self._wake.set()
        if index <= self._saved:
            self._save_wake.set()
        buf.append(row)
        now = time.monotonic()
        marks = self._marks
        if not marks or now - marks[-1][1] >= _MARK_EVERY:
            marks.append((index, now))
        self.published += 1
        return index

    def append(self, row: Row) -> int:
        """Buffer one reading (after :meth:`room_for`); returns its index."""
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
        self.published += 1
        return index

    # -- durability points ---------------------------------------------------------

    async def persist(self) -> None:
        """Return once every reading appended before is in the local store."""
        target = self._base + len(self._buf)
        while self._saved < target:
            self._save_wake.set()
            await self._changed.wait()

    async def flush(self) -> None:
        """Return once every reading appended before is stored on the homeserver,
        dropped or refused; raises the first refusal."""
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
        if self._base < target or self._carried:
            return False
        return all(b.start >= target for b in self._inflight) and all(
            b.start >= target for b in self._sealed
        )

    # -- the pump: encoder -> sealed batches -> outbox ------------------------------

    async def _pump(self) -> None:
        cfg = self._cfg
        while True:
            wake = self._wake = anyio.Event()
            await self._seal(force=False)
            if self._drop_ids or (
                cfg.overflow == "drop_oldest"
                and len(self._buf) + self._sealed_n > cfg.max_buffered
            ):
                await self._drop_oldest()
            if not self.in_flight and not self._sealed and self._buf and (
                self._aged() or self._flush_target > self._base
            ):
                await self._seal(force=True)
            while self._sealed and self.in_flight < cfg.window:
                await self._send_oldest()
            timeout = math.inf
            if self._buf and not self.in_flight and not self._sealed:
                timeout = max(0.0, self._arrival() + cfg.max_age - time.monotonic())
            with anyio.move_on_after(timeout):
                await wake.wait()

    def _arrival(self) -> float:
        """When the oldest unsealed reading was published (monotonic)."""
        marks = self._marks
        while len(marks) > 1 and marks[1][0] <= self._base:
            marks.popleft()
        return marks[0][1] if marks else time.monotonic()

    def _aged(self) -> bool:
        return time.monotonic() - self._arrival() >= self._cfg.max_age

    async def _feed(self, limit: int) -> bool:
        """Feed readings up to index ``limit`` to the encoder, stopping when it is
        full; returns whether it is."""
        enc = self._enc
        while self._fed < limit:
            i = self._fed - self._base
            stop = min(limit - self._base, i + _FEED_SLICE)
            end = enc.add_rows(self._buf, i, stop, on_invalid=self._skip_invalid)
            self._fed = self._base + end
            if end < stop or enc.would_overflow():
                return True
            await anyio.lowlevel.checkpoint()
            enc = self._enc
        return enc.would_overflow()

    def _skip_invalid(self, index: int, exc: ConfigError) -> None:
        # Only a damaged store can get here: publish() validated the row.
        self.invalid += 1
        log.error("publisher %s: skipping an invalid buffered reading: %s",
                  self._cfg.device, exc)

    async def _seal(self, *, force: bool) -> None:
        """Seal every full batch (and with ``force`` the rest) and commit them."""
        device, session = self._cfg.device, self.session
        limit = self._base + len(self._buf)
        out: list[tuple[int, int, bytes]] = []
        cursor = self._base
        while True:
            full = await self._feed(limit if force else self._base + len(self._buf))
            if not full and not (force and len(self._enc)):
                break
            seq = self.next_seq
            n = self._fed - cursor
            content = self._enc.encode(device, seq, session=session)
            if len(self._enc):
                # The encoder's estimate was off and it left readings behind, not
                # necessarily the newest: re-encode a shorter prefix in order.
                content, n = self._encode_prefix(cursor, max(1, (n - len(self._enc)) * 15 // 16),
                                                 seq)
            self._enc = BatchEncoder(max_bytes=self.max_bytes)
            cursor += n
            self._fed = cursor
            self.next_seq = seq + 1
            out.append((seq, n, _json.encode(content)))
            if not full and self._fed >= limit:
                break
        if out:
            await self._commit(out, cursor)

    def _encode_prefix(self, cursor: int, k: int, seq: int) -> tuple[dict[str, Any], int]:
        i = cursor - self._base
        while True:
            enc = BatchEncoder(max_bytes=self.max_bytes)
            j, stop = i, min(i + k, len(self._buf))
            while j < stop:  # every row of the prefix: add_rows pauses when full
                j = enc.add_rows(self._buf, j, stop, on_invalid=_ignore)
            content = enc.encode(self._cfg.device, seq, session=self.session)
            if not len(enc):
                return content, k
            k = max(1, k * 7 // 8)

    async def _commit(self, out: list[tuple[int, int, bytes]], end: int) -> None:
        room, device, next_seq = self._cfg.room_id, self._cfg.device, self.next_seq
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
                self.bytes_sealed += len(content)
                self.readings_sealed += n
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
        entry = self._client.new_entry(self._cfg.room_id, READINGS, sealed.content,
                                       lane=self._cfg.lane)
        _, (handle,) = await self._client.stage(lambda tx: buffer.to_outbox(tx, sealed.id, entry))
        assert self._tg is not None
        self._tg.start_soon(self._delivered, sealed, handle)
        self._notify()

    async def _delivered(self, sealed: SealedRow, handle: SendHandle) -> None:
        try:
            await handle.wait()
        except MatrixError as exc:
            self.failed += sealed.n
            if len(self._errors) < 16:
                self._errors.append(exc)
            log.error("publisher %s: batch %d (%d readings) refused by the homeserver: %s",
                      self._cfg.device, sealed.seq, sealed.n, exc)
        else:
            self.batches_sent += 1
            self.readings_sent += sealed.n
            self.bytes_sent += len(sealed.content)
            self.last_delivery = time.monotonic()
        self._inflight.remove(sealed)
        self._wake.set()
        self._notify()

    async def _carried_delivered(self, handle: SendHandle) -> None:
        try:
            await handle.wait()
        except MatrixError as exc:
            if len(self._errors) < 16:
                self._errors.append(exc)
            log.error("publisher %s: a batch of a previous run refused by the homeserver: %s",
                      self._cfg.device, exc)
        else:
            self.last_delivery = time.monotonic()
        self._carried.remove(handle)
        self._wake.set()
        self._notify()

    # -- dropping on overflow ---------------------------------------------------------

    def _drop_sealed(self, over: int) -> None:
        """Drop the oldest sealed batches until ``over`` readings are gone (or none is
        left). Their rows are deleted by the pump; a crash before that brings them
        back, which loses nothing."""
        first = not self.dropped
        while over > 0 and self._sealed:
            victim = self._sealed.popleft()
            self._sealed_n -= victim.n
            over -= victim.n
            self.dropped += victim.n
            self.dropped_batches += 1
            self._drop_ids.append(victim.id)
            self._wake.set()
        if first and self.dropped:
            log.warning("publisher %s: buffer full (max_buffered=%d), dropping the oldest"
                        " readings", self._cfg.device, self._cfg.max_buffered)

    async def _drop_oldest(self) -> None:
        await self._seal(force=True)
        self._drop_sealed(len(self._buf) + self._sealed_n - self._cfg.max_buffered)
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
            with anyio.move_on_after(self._cfg.save_interval):
                await self._save_wake.wait()
            await self.save()

    async def save(self) -> None:
        """Write the readings not yet in the store as one chunk."""
        room, device = self._cfg.room_id, self._cfg.device
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
