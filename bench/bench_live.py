"""The live channel: typing latency under Synapse's default limits, live vs timeline only.

One writer types 10 characters/s into a document that 1 or 4 other clients
have open (2 and 5 open clients), every user under Synapse's default
``rc_message`` (0.2 events/s, burst 10), the writer's burst spent before the
typing starts (10 filler events). Each character's latency is the time until
a reader's document has it, over all readers. The same workload runs twice in
the same run on the same server: with the live channel (``live=True``, the
default: each batch also goes at once over to-device to the peers) and with
the timeline alone (``live=False``), which is the baseline.

Figures (``N`` = 2 or 5 open clients):

- ``live_latency_p50_ms_N`` / ``live_latency_p99_ms_N``: with the live channel.
- ``live_latency_p50_ms_N_timeline`` / ``..._p99_ms_N_timeline``: timeline only.
- ``live_to_device_sends_N``: to-device requests the writer made (one per
  batch, each addressing every reader's device).
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import AsyncExitStack

import anyio
import pycrdt

from mxsync import Client
from mxsync.dev import DevServer

from .bench_docs import Arrivals, percentile, standalone

__all__ = ["run"]

FILLER = "org.mxsync.bench.filler"


def say(msg: str) -> None:
    print(f"[live] {msg}", file=sys.stderr, flush=True)


async def _clients(hs: DevServer, stack: AsyncExitStack, n: int, tag: str) -> list[Client]:
    out = []
    for i in range(n):
        creds = await hs.register(f"blive{tag}{i}x{int(time.time() * 1000) % 10**8}")
        out.append(await stack.enter_async_context(
            Client(hs.url, creds.user_id, password=creds.password)))
    return out


async def typing(hs: DevServer, n_clients: int, *, live: bool, seconds: float,
                 rate: float = 10.0) -> tuple[list[float], int]:
    """Latencies (ms) of every character at every reader, and the to-device sends."""
    async with AsyncExitStack() as stack:
        w, *readers = await _clients(hs, stack, n_clients, f"{n_clients}{int(live)}")
        room = await w.create_room("bench-live", invite=[r.user_id for r in readers])
        for r in readers:
            await r.join(room)
        dw = await stack.enter_async_context(w.open_doc(room, live=live))
        drs = [await stack.enter_async_context(r.open_doc(room, live=live)) for r in readers]
        with anyio.fail_after(120):
            for d in (dw, *drs):
                await d.wait_synced()
            if live:  # the readers' announcements have reached the writer
                while (dw.channel_statistics() or _NONE).peers < len(readers):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            handles = [await w.send(room, FILLER, {"i": i}) for i in range(10)]
            for h in handles:
                await h.wait()
        sends_before = w.to_device_statistics().sent
        t = dw.doc.get("t", type=pycrdt.Text)
        arrivals = [Arrivals(d.doc.get("t", type=pycrdt.Text)) for d in drs]
        typed: list[float] = []
        async with anyio.create_task_group() as tg:
            for a in arrivals:
                tg.start_soon(a.run)
            start = time.perf_counter()
            while (now := time.perf_counter()) - start < seconds:
                await anyio.sleep(max(0.0, start + len(typed) / rate - now))
                typed.append(time.perf_counter())
                t += "x"
            with anyio.fail_after(300):
                while any(len(a.at) < len(typed) for a in arrivals):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        sends = w.to_device_statistics().sent - sends_before
    return [(a.at[i] - at) * 1000 for a in arrivals for i, at in enumerate(typed)], sends


class _None:
    peers = 0


_NONE = _None()


async def run(hs: DevServer, *, quick: bool) -> dict[str, float]:
    seconds = 6.0 if quick else 20.0
    results: dict[str, float] = {}
    for n in (2, 5):
        for live in (True, False):
            samples, sends = await typing(hs, n, live=live, seconds=seconds)
            suffix = f"{n}" if live else f"{n}_timeline"
            p50, p99 = statistics.median(samples), percentile(samples, 99)
            results[f"live_latency_p50_ms_{suffix}"] = p50
            results[f"live_latency_p99_ms_{suffix}"] = p99
            if live:
                results[f"live_to_device_sends_{n}"] = sends
            say(f"{n} open clients, {'live channel' if live else 'timeline only'}: "
                f"p50 {p50:.0f} ms, p99 {p99:.0f} ms ({len(samples)} samples, "
                f"{sends} to-device sends)")
    return results


def main(argv: list[str] | None = None) -> int:
    return standalone("bench_live", run, argv)


if __name__ == "__main__":
    sys.exit(main())
