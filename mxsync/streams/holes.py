"""Looking back for the readings batches a sequence jump skipped.

A :class:`~mxsync.streams.subscriber.Subscriber` that sees a session's ``seq``
jump calls :func:`find_batches` before taking the batch that showed it. The
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
from typing import Final

from ..engine.authz import PowerLevels
from ..engine.events import RoomEvent
from ..engine.pages import look_back_retrying
from ..engine.surface import Engine
from ..protocol.readings import Reading
from ..protocol.types import READINGS
from .history import BatchReader

__all__ = ["Key", "find_batches"]

log = logging.getLogger("mxsync.streams.subscriber")

#: (sender, device, session): one publisher session's chain of batches.
Key = tuple[str, str, "int | None"]

#: Waits before each look-back (seconds; the subscriber's later batches wait
#: meanwhile), and how far back each looks.
DELAYS: Final = (0.0, 1.0, 2.0, 4.0)
MAX_EVENTS: Final = 5_000


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
