"""SnapshotPolicy: when one client posts a snapshot of one document.

Owns the counting of update events and bytes since the last snapshot seen and
the jittered thresholds derived from the client's identity. Pure arithmetic:
it knows no event, struct or clock.
"""

from __future__ import annotations

import hashlib
import math
from typing import Final

from ...errors import ConfigError


class SnapshotPolicy:
    """Decides when this client posts a snapshot of one document.

    Counts the update events of the document since the last complete snapshot seen
    in the room, from any client including this one. A snapshot costs ``k`` events
    (one per chunk); the policy asks for one when the updates since the last one
    reach ``every_updates * k`` events or ``max(every_bytes, state size)`` bytes.
    So snapshots never take more than about 1/``every_updates`` of the events sent,
    and a reader opening the document replays a bounded number of events and bytes.

    Each threshold is multiplied by a factor in [1, 1 + ``jitter``) derived from
    ``identity`` (the user id, or user id and device id): the client with the lowest
    factor snapshots first and the others, seeing its snapshot, reset and stand down.
    """

    #: Payload bytes one chunk carries, near enough, to count a snapshot's events.
    CHUNK_PAYLOAD: Final = 42_000

    def __init__(
        self,
        identity: str,
        *,
        every_updates: int = 50,
        every_bytes: int = 256 * 1024,
        jitter: float = 0.5,
    ) -> None:
        if every_updates < 1 or every_bytes < 1 or not 0 <= jitter <= 4:
            raise ConfigError("every_updates and every_bytes must be >= 1, jitter in [0, 4]")
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).digest()
        self.factor = 1 + jitter * int.from_bytes(digest[:8], "big") / 2**64
        self.every_updates = every_updates
        self.every_bytes = every_bytes
        self._updates = 0
        self._bytes = 0

    @property
    def updates_since(self) -> int:
        """Update events seen since the last snapshot."""
        return self._updates

    @property
    def bytes_since(self) -> int:
        """Payload bytes of those updates."""
        return self._bytes

    def observe_update(self, nbytes: int) -> None:
        """An update event of this document (from anyone) was applied."""
        self._updates += 1
        self._bytes += nbytes

    def observe_snapshot(self) -> None:
        """A complete, valid snapshot of this document (from anyone) was seen or sent."""
        self._updates = 0
        self._bytes = 0

    def thresholds(self, state_bytes: int = 0) -> tuple[int, int]:
        """(update events, update bytes) at which :meth:`should_snapshot` turns true."""
        events = max(1, math.ceil(state_bytes / self.CHUNK_PAYLOAD))
        return (
            math.ceil(self.every_updates * events * self.factor),
            math.ceil(max(self.every_bytes, state_bytes) * self.factor),
        )

    def should_snapshot(self, state_bytes: int = 0) -> bool:
        """Whether to post a snapshot now; ``state_bytes`` is ``len(doc.get_update())``."""
        if not self._updates:
            return False
        max_updates, max_bytes = self.thresholds(state_bytes)
        return self._updates >= max_updates or self._bytes >= max_bytes
