"""The chains of publisher sessions a subscriber takes, and looking back for the
batches a sequence jump skipped.

:class:`Chains` owns, for one :class:`~mxsync.streams.subscriber.Subscriber`,
the last ``seq`` taken per (sender, device, session), the event ids of the
batches taken last and the counters of what was skipped or missing. A batch
whose ``seq`` is not above its session's last is skipped: an *overlap* if it
is the very event taken before (the seam between a replay of history and the
live events queued meanwhile; the last ``TAKEN_IDS`` ids are remembered), a
*duplicate* if it is another event (a send that landed twice, a batch posted
again).

A subscriber that sees a session's ``seq`` jump calls :func:`find_batches`
before taking the batch that showed it. The
sync loop's gap repair normally delivers every batch first; this covers a
server that could not backfill them yet (its peer unreachable, or in backoff
right after a heal). It pages the room backwards through
``Engine.look_back`` (which makes the server backfill), bounded and with
backoff; each attempt stops once it passes below the hole (one device's
batches form a chain, which every order of the graph keeps), and the next one,
after the backoff, pages through it again: a server whose page was full locally
backfills in the background. A hole the publisher made itself (overflow
policy) therefore costs the subscriber the whole backoff (about 7 s) once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Final

from ..engine.authz import PowerLevels
from ..engine.events import RoomEvent
from ..engine.pages import look_back_retrying
from ..engine.surface import Engine
from ..protocol.readings import Reading
from ..protocol.types import READINGS
from .history import BatchReader

__all__ = ["Chains", "Key", "find_batches"]

log = logging.getLogger("mxsync.streams.subscriber")

#: (sender, device, session): one publisher session's chain of batches.
Key = tuple[str, str, "int | None"]

#: Waits before each look-back (seconds; the subscriber's later batches wait
#: meanwhile), and how far back each looks.
DELAYS: Final = (0.0, 1.0, 2.0, 4.0)
MAX_EVENTS: Final = 5_000

#: Event ids of the batches taken last, to tell an overlap from a duplicate. The
#: seam a replay leaves is bounded by the live stream's buffer (the engine's
#: ``room_events``, 1,024 events), so this covers it with room to spare.
TAKEN_IDS: Final = 4096


class Chains:
    """Each publisher session's chain as one subscriber took it (module docstring)."""

    def __init__(self) -> None:
        self._last: dict[Key, int] = {}
        self._taken: OrderedDict[str, None] = OrderedDict()  # oldest first
        self.duplicates = 0
        self.overlap = 0
        #: Holes that stayed (each logged), the batches in them, those found late.
        self.gaps = 0
        self.missing = 0
        self.repaired = 0

    def last(self, key: Key) -> int | None:
        """The seq last taken of ``key``'s session, None before its first."""
        return self._last.get(key)

    def seen(self, ev: RoomEvent, key: Key, seq: int) -> bool:
        """Is ``seq`` not above the last taken? Then ``ev`` is skipped, counted as
        an overlap or a duplicate."""
        last = self._last.get(key)
        if last is None or seq > last:
            return False
        if ev.event_id in self._taken:
            self.overlap += 1
        else:
            self.duplicates += 1
        return True

    def took(self, ev: RoomEvent, key: Key, seq: int) -> None:
        self._last[key] = seq
        self._taken[ev.event_id] = None
        if len(self._taken) > TAKEN_IDS:
            self._taken.popitem(last=False)

    def missing_between(self, key: Key, last: int, seq: int) -> None:
        """The batches ``last+1 .. seq-1`` of ``key`` stay missing: counted, logged."""
        sender, device, _ = key
        self.gaps += 1
        self.missing += seq - last - 1
        log.warning("device %s of %s: batches %d..%d are missing", device, sender,
                    last + 1, seq - 1)


async def find_batches(
    client: Engine, room_id: str, reader: BatchReader, levels: PowerLevels,
    key: Key, last: int, upto: int,
) -> dict[int, tuple[RoomEvent, list[Reading]]]:
    """The batches ``last+1 .. upto-1`` of ``key`` found in the room, by seq;
    their readings carry their identity (session, index)."""
    sender, device, session = key
    found: dict[int, tuple[RoomEvent, list[Reading]]] = {}

    def visit(old: RoomEvent) -> bool:
        batch = None if old.sender != sender else reader.batch(old, levels)
        if batch is None or batch.device != device or batch.session != session:
            return False
        if batch.seq <= last:
            return True  # below the hole: this attempt has seen all it will
        if batch.seq < upto and batch.seq not in found:
            readings = reader.readings(old, batch, identity=True)
            if readings is not None:
                found[batch.seq] = (old, readings)
        return len(found) == upto - last - 1

    # Paged through the hole (or failed) without finding all of it: the server may
    # be backfilling it in the background (a full local page does that), so the
    # next attempt, after the backoff, pages through it again.
    await look_back_retrying(
        client, room_id, [READINGS], delays=DELAYS, max_events=MAX_EVENTS, visit=visit,
        done=lambda: len(found) == upto - last - 1, log=log,
        what=f"batches of {device}",
    )
    return found
