"""Benchmark of history by reading time: the batch index against the scan by server time.

A device publishes ``n`` batches of 200 readings, one batch per minute of
reading time over the last hours; every fifth batch is uploaded late (its
readings are stamped three hours before the others of its moment), as a
device that buffered through an outage would. A query for ten minutes of
readings in the middle of the range is then answered

- ``history_index_first_ms``: from the batch index, first query (the one
  backwards walk of the room included);
- ``history_index_repeat_ms``: the same query again (cached batches);
- ``history_scan_ms``: by the timestamp scan (``history_retention=0``, the
  pre-index behaviour, ``history_lag`` 120 s);
- ``history_scan_wide_ms``: by the timestamp scan with a lag of two days, wide
  enough to find every reading: it reads the whole room on every query;

with ``history_index_found`` / ``history_scan_found`` / ``history_scan_wide_found``
readings found (the expected count is ``history_expected``). Everything is
uploaded within seconds at the start, so the 120 s scan finds none of these
minutes-to-hours-old readings.

``python -m bench --only history [--quick]``.
"""

from __future__ import annotations

import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

from mxsync import Client
from mxsync.dev import DevServer

PER_BATCH = 200
MINUTE = 60_000


async def run(hs: DevServer, *, quick: bool) -> dict[str, Any]:
    n = 60 if quick else 300
    creds = await hs.register(f"hist{uuid.uuid4().hex[:6]}")
    await hs.override_ratelimit(creds.user_id)
    now = int(time.time() * 1000)
    base = now - (n + 10) * MINUTE  # batch k covers minute k after base
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            Client(hs.url, creds.user_id, password=creds.password))
        room = await client.create_room("history-bench")
        async with client.publisher(room, device="meter", presence=False, max_age=60.0) as pub:
            for k in range(n):
                late = k % 5 == 4
                t0 = base + k * MINUTE - (3 * 60 * MINUTE if late else 0)
                for i in range(PER_BATCH):
                    pub.publish("power", k * 1000 + i, t=t0 + i * (MINUTE // PER_BATCH))
                await pub.flush()
        lo = base + (n // 2) * MINUTE - 3 * 60 * MINUTE
        hi = lo + 10 * MINUTE
        # Readings in [lo, hi): late batches k with base + k*MIN - 3h in range, and
        # on-time ones with base + k*MIN in range.
        expected = 0
        for k in range(n):
            t0 = base + k * MINUTE - (3 * 60 * MINUTE if k % 5 == 4 else 0)
            expected += sum(1 for i in range(PER_BATCH)
                            if lo <= t0 + i * (MINUTE // PER_BATCH) < hi)
        reader = await stack.enter_async_context(
            Client(hs.url, creds.user_id, password=creds.password))
        async with reader.subscribe(room, live=False) as sub:
            started = time.perf_counter()
            first = await sub.history("power", lo, hi)
            first_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            repeat = await sub.history("power", lo, hi)
            repeat_ms = (time.perf_counter() - started) * 1000
        async with reader.subscribe(room, live=False, history_retention=0) as scan_sub:
            started = time.perf_counter()
            scanned = await scan_sub.history("power", lo, hi)
            scan_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            wide = await scan_sub.history("power", lo, hi, lag=2 * 86_400)
            wide_ms = (time.perf_counter() - started) * 1000
    assert len(first) == len(repeat)
    return {
        "history_batches": n,
        "history_expected": expected,
        "history_index_found": len(first),
        "history_scan_found": len(scanned),
        "history_index_first_ms": round(first_ms, 1),
        "history_index_repeat_ms": round(repeat_ms, 2),
        "history_scan_ms": round(scan_ms, 1),
        "history_scan_wide_found": len(wide),
        "history_scan_wide_ms": round(wide_ms, 1),
    }
