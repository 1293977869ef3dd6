"""Convergence after a federation heal, and what the gap repair fetches for it.

Two federating Synapses (the second on PostgreSQL, as in the test suite) behind
TCP proxies. Per round: a fresh room, a writer on each side with a document,
the link cut, ``EDITS`` update events per side on the same Text and Map (more
than Synapse's catch-up keeps, so each server's next sync is ``limited`` and
only the gap repair's backward paging brings the rest), the link healed.

Figures (medians over the rounds):

- ``fed_converge_s_reset``: seconds from the heal until both replicas hold the
  same content with nothing pending, with Synapse's admin backoff reset
  (``reset_connection``) right after the heal;
- ``fed_converge_s_noreset``: the same without it: Synapse's own retry, woken
  by fresh traffic (one edit per side every ``NUDGE_S`` seconds, as live rooms
  have);
- ``fed_gap_events_fetched_per_gap`` / ``fed_gap_events_delivered_per_gap``:
  events the sync loops' gap repair fetched from /messages and delivered, per
  repaired gap (both clients, all rounds); ``fed_gap_pages_per_gap`` the pages.

``hs`` (the harness's single server) is not used: the federation is its own.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pycrdt

from mxsync import Client
from mxsync.dev import DevServer, Federation

EDITS = 160
NUDGE_S = 5.0
DEADLINE_S = 180.0


def _content(sdoc: Any) -> tuple[str, dict[str, Any]]:
    doc = sdoc.doc
    return str(doc.get("t", type=pycrdt.Text)), dict(doc.get("m", type=pycrdt.Map).to_py())


async def _edit(sdoc: Any, side: str, n: int) -> None:
    text = sdoc.doc.get("t", type=pycrdt.Text)
    m = sdoc.doc.get("m", type=pycrdt.Map)
    for i in range(n):
        if i % 3 == 0:
            text.insert(0 if side == "a" else len(str(text)), f"{side}{i} ")
        elif i % 3 == 1:
            m[f"k{i % 7}"] = f"{side}{i}"
        elif side == "a":
            m[f"s{i % 5}"] = i
        else:
            m.pop(f"s{i % 5}", None)
        await sdoc.flush()


async def _round(fed: Federation, tmp: Path, n: int, *, reset: bool) -> tuple[float, list[Any]]:
    stamp = f"{n}x{int(time.time() * 1000) % 10**8}"
    a_creds = await fed.servers[0].register(f"bencha{stamp}")
    b_creds = await fed.servers[1].register(f"benchb{stamp}")
    for hs, creds in ((fed.servers[0], a_creds), (fed.servers[1], b_creds)):
        await hs.override_ratelimit(creds.user_id)
    async with AsyncExitStack() as stack:
        alice = await stack.enter_async_context(Client(
            a_creds.homeserver, a_creds.user_id, password=a_creds.password,
            store_path=tmp / f"a{stamp}.db"))
        bob = await stack.enter_async_context(Client(
            b_creds.homeserver, b_creds.user_id, password=b_creds.password,
            store_path=tmp / f"b{stamp}.db"))
        room = await alice.create_room("bench-split", invite=[b_creds.user_id])
        with anyio.fail_after(120):
            await bob.join(room, via=[fed.server_names[0]])
        da = await stack.enter_async_context(alice.open_doc(room, "d"))
        db = await stack.enter_async_context(bob.open_doc(room, "d"))
        with anyio.fail_after(120):
            await da.wait_synced()
            await db.wait_synced()
        fed.cut("drop")
        try:
            with anyio.fail_after(DEADLINE_S):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_edit, da, "a", EDITS)
                    tg.start_soon(_edit, db, "b", EDITS)
        finally:
            healed = time.monotonic()
            await fed.heal_link(reset=reset)
        last_nudge, nudges = healed, 0
        with anyio.fail_after(DEADLINE_S):
            while True:
                sa, sb = da.statistics(), db.statistics()
                if (_content(da) == _content(db) and not sa.pending_updates
                        and not sb.pending_updates and not sa.pending_edits
                        and not sb.pending_edits):
                    break
                if not reset and time.monotonic() - last_nudge > NUDGE_S:
                    nudges += 1
                    da.doc.get("m", type=pycrdt.Map)[f"nudge-a{nudges}"] = nudges
                    db.doc.get("m", type=pycrdt.Map)[f"nudge-b{nudges}"] = nudges
                    last_nudge = time.monotonic()
                await anyio.sleep(0.05)
        took = time.monotonic() - healed
        return took, [alice.sync.statistics(), bob.sync.statistics()]


async def run(hs: DevServer | None = None, *, quick: bool) -> dict[str, float]:
    rounds = 1 if quick else 3
    base = Path(tempfile.mkdtemp(prefix="mxsync-bench-fed-"))
    os.chmod(base, 0o711)  # PostgreSQL runs as its own user and must reach its dir
    figures: dict[str, float] = {}
    stats: list[Any] = []
    try:
        async with Federation(base, ("sqlite", "postgres"), rate_limits="default") as fed:
            for reset in (True, False):
                times = []
                for n in range(rounds):
                    took, st = await _round(fed, base, n, reset=reset)
                    times.append(took)
                    stats += st
                    print(f"[federation] reset={reset} round {n}: converged in {took:.1f} s",
                          file=sys.stderr)
                figures[f"fed_converge_s_{'reset' if reset else 'noreset'}"] = round(
                    statistics.median(times), 2)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    gaps = sum(s.gap_fills for s in stats)
    figures["fed_gaps"] = gaps
    if gaps:
        figures["fed_gap_events_fetched_per_gap"] = round(
            sum(s.gap_events_fetched for s in stats) / gaps, 1)
        figures["fed_gap_events_delivered_per_gap"] = round(
            sum(s.gap_events_delivered for s in stats) / gaps, 1)
        figures["fed_gap_pages_per_gap"] = round(sum(s.gap_pages for s in stats) / gaps, 1)
    figures["fed_edits_per_side"] = EDITS
    return figures


if __name__ == "__main__":
    print(anyio.run(lambda: run(None, quick="--quick" in sys.argv), backend="asyncio"))
