"""What the sync loop reports about itself: its live :class:`Status` and its
typed :class:`SyncStatistics`. Owned and updated by ``SyncLoop``; read by the
Connection (``client.status``) and by ``Client.statistics()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

__all__ = ["State", "Status", "SyncStatistics"]

State = Literal["connecting", "synced", "backing_off", "stopped"]


@dataclass
class Status:
    """What the sync loop is doing; ``last_error`` stays set until the next success."""

    state: State = "connecting"
    last_error: str | None = None
    failures: int = 0
    syncs: int = 0
    since: str | None = None


class SyncStatistics(msgspec.Struct, frozen=True):
    """What the sync loop has done since the client started."""

    #: "connecting", "synced", "backing_off" or "stopped".
    state: str
    #: /sync answers processed.
    syncs: int
    #: Events handed to consumers (live batches only).
    events: int
    #: Limited timelines whose gap was filled from /messages.
    gap_fills: int
    #: Events the gap fills fetched from /messages (new or already delivered).
    gap_events_fetched: int = 0
    #: Events the gap fills delivered.
    gap_events_delivered: int = 0
    #: /messages pages the gap fills fetched.
    gap_pages: int = 0
    #: Gaps longer than ``max_gap_events``: only their newest events were delivered.
    gaps_truncated: int = 0
    #: Events found by walking a repaired gap again (backfilled meanwhile).
    gap_rechecked: int = 0
