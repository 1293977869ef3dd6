"""Synced documents: throughput, latency, bytes per edit and open time, each next to
the naive way measured in the same run on the same server.

The naive way is what a straightforward Matrix CRDT binding does: one Matrix event
per pycrdt update (each transaction's ``update``), sent as soon as it happens
(eight sends in flight, which helps it), applied by the reader as it arrives.

Figures on relaxed users (Synapse's message rate limit lifted per user):

- ``doc_edits_per_s``: single-character edits typed as fast as possible by one
  writer, divided by the time until another client's document has all of them.
- ``doc_latency_p50_ms`` / ``_p99_ms``: one edit on an idle server until the other
  client's document has it.
- ``doc_bytes_per_edit``: JSON content bytes PUT to the homeserver per edit in the
  throughput run (``doc_payload_bytes_per_edit``: Yjs payload bytes only).
- ``doc_open_ms_replay`` / ``doc_open_ms_snapshot``: a fresh client opening a
  document with N single-edit update events of history (10,000; 2,000 quick),
  first with no snapshot in the room (it replays every update), then after the
  first opener posted its snapshot.

Figures with the writer under Synapse's default message limit (``rc_message``:
0.2 events/s, burst 10; the reader is relaxed), after the writer's burst is spent:

- ``doc_latency_p50_ms_default`` / ``_p99_ms_default``: a person typing 10
  characters/s for 6 s (30 s in full runs); each character until the other
  client has it (the first 2 s, while the burst lasts, are left out). An
  isolated edit with tokens left in the bucket has the relaxed latency;
  continuous typing is what the limit changes. ``doc_latency_p50_ms_typing``
  (full runs) is the same typing by a relaxed writer, for comparison.
- ``doc_edits_per_s_default``: the writer then types as fast as it can for a
  fixed time (4 s; 20 s in full runs); all edits typed divided by the time until the
  other client's document has all of them. The document grows to ~100,000
  characters in a full run, and pycrdt's cost per transaction grows with it, so
  ``doc_edits_per_s_sustained`` (full runs) is the same by a relaxed writer.
- ``doc_edits_per_s_naive_default``: the naive way under the default limit
  (full runs only; it is the limiter's rate): 14 edits at once, the rate over
  the arrivals after the burst. ``doc_edits_per_s_naive_default_ceiling`` is
  that rate as Synapse configures it (0.2/s), in every run.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.lowlevel
import pycrdt

from mxsync import Client, OutgoingEvent
from mxsync.dev import DevServer
from mxsync.protocol import docs as proto
from mxsync.protocol.types import DOC, DOC_UPDATE

__all__ = ["run"]

NAIVE = "org.mxsync.bench.naive"
#: Synapse's default rc_message: what one event per edit (or reading) can sustain.
RC_MESSAGE_PER_SECOND = 0.2


def say(msg: str) -> None:
    print(f"[docs] {msg}", file=sys.stderr, flush=True)


async def until(cond: Callable[[], bool], deadline: float) -> None:
    with anyio.fail_after(deadline):
        while not cond():  # noqa: ASYNC110 - polls a document, which has no event to wait on
            await anyio.sleep(0.005)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Naive:
    """One event per pycrdt update: the writer's observer sends, the reader applies."""

    def __init__(self, writer: Client, reader: Client, room: str) -> None:
        self.writer, self.reader, self.room = writer, reader, room
        self.wdoc: pycrdt.Doc[Any] = pycrdt.Doc()
        self.rdoc: pycrdt.Doc[Any] = pycrdt.Doc()
        self.wtext = self.wdoc.get("t", type=pycrdt.Text)
        self.rtext = self.rdoc.get("t", type=pycrdt.Text)
        self.send, self.recv = anyio.create_memory_object_stream[bytes](100_000)
        self.wdoc.observe(lambda e: self.send.send_nowait(e.update))
        self.bytes = 0
        self.events = 0
        self.arrived: list[float] = []  # perf_counter() of each event at the reader

    async def sender(self) -> None:
        async with self.recv:
            async for update in self.recv:
                content = {"update": base64.b64encode(update).decode()}
                self.bytes += len(json.dumps(content, separators=(",", ":")))
                self.events += 1
                await self.writer.send(self.room, NAIVE, content, lane=f"n{self.events % 8}")

    async def applier(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with self.reader.room_events(self.room, [NAIVE]) as events:
            task_status.started()
            async for ev in events:
                self.arrived.append(time.perf_counter())
                self.rdoc.apply_update(base64.b64decode(ev.content["update"]))


async def _users(hs: DevServer, stack: AsyncExitStack, n: int, tag: str,
                 *, relaxed: bool = True, **kw: Any) -> list[Client]:
    clients = []
    for i in range(n):
        creds = await hs.register(f"bench{tag}{i}x{int(time.time() * 1000) % 10**8}")
        if relaxed:
            await hs.override_ratelimit(creds.user_id)
        clients.append(await stack.enter_async_context(
            Client(hs.url, creds.user_id, password=creds.password, **kw)))
    return clients


async def _room(owner: Client, members: list[Client], *, encrypted: bool = False) -> str:
    room = await owner.create_room("bench", invite=[m.user_id for m in members],
                                   encrypted=encrypted)
    for m in members:
        await m.join(room)
    return room


async def throughput(w: Client, r: Client, n: int, *, encrypted: bool = False
                     ) -> dict[str, float]:
    room = await _room(w, [r], encrypted=encrypted)
    text = "".join(string.ascii_lowercase[i % 26] for i in range(n))
    async with w.open_doc(room, "tp") as dw, r.open_doc(room, "tp") as dr:
        with anyio.fail_after(60):
            await dw.wait_synced()
            await dr.wait_synced()
        t = dw.doc.get("t", type=pycrdt.Text)
        rt = dr.doc.get("t", type=pycrdt.Text)
        started = time.perf_counter()
        for ch in text:
            t += ch
            await anyio.lowlevel.checkpoint()
        await until(lambda: len(rt) == n, 300)
        elapsed = time.perf_counter() - started
        assert str(rt) == text
        st = dw.statistics()
    say(f"mxsync: {n} edits in {elapsed:.2f} s, {st.update_events_sent} events")
    return {
        "doc_edits_per_s": n / elapsed,
        "doc_bytes_per_edit": st.bytes_sent / n,
        "doc_payload_bytes_per_edit": st.payload_bytes_sent / n,
        "doc_events_per_1000_edits": 1000 * st.update_events_sent / n,
    }


async def throughput_naive(w: Client, r: Client, n: int) -> dict[str, float]:
    room = await _room(w, [r])
    naive = Naive(w, r, room)
    async with anyio.create_task_group() as tg:
        await tg.start(naive.applier)
        tg.start_soon(naive.sender)
        started = time.perf_counter()
        for i in range(n):
            naive.wtext += string.ascii_lowercase[i % 26]
            await anyio.lowlevel.checkpoint()
        await until(lambda: len(naive.rtext) == n, 600)
        elapsed = time.perf_counter() - started
        tg.cancel_scope.cancel()
    say(f"naive: {n} edits in {elapsed:.2f} s")
    return {"doc_edits_per_s_naive": n / elapsed, "doc_bytes_per_edit_naive": naive.bytes / n}


async def latency(w: Client, r: Client, n: int) -> dict[str, float]:
    room = await _room(w, [r])
    samples: list[float] = []
    async with w.open_doc(room, "lat") as dw, r.open_doc(room, "lat") as dr:
        with anyio.fail_after(60):
            await dw.wait_synced()
            await dr.wait_synced()
        t = dw.doc.get("t", type=pycrdt.Text)
        rt = dr.doc.get("t", type=pycrdt.Text)
        for i in range(n):
            await anyio.sleep(0.1)  # idle server between edits
            started = time.perf_counter()
            t += "x"
            await until(lambda i=i: len(rt) == i + 1, 30)
            samples.append((time.perf_counter() - started) * 1000)
    return {"doc_latency_p50_ms": statistics.median(samples),
            "doc_latency_p99_ms": percentile(samples, 99)}


async def latency_naive(w: Client, r: Client, n: int) -> dict[str, float]:
    room = await _room(w, [r])
    naive = Naive(w, r, room)
    samples: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(naive.applier)
        tg.start_soon(naive.sender)
        for i in range(n):
            await anyio.sleep(0.1)
            started = time.perf_counter()
            naive.wtext += "x"
            await until(lambda i=i: len(naive.rtext) == i + 1, 30)
            samples.append((time.perf_counter() - started) * 1000)
        tg.cancel_scope.cancel()
    return {"doc_latency_p50_ms_naive": statistics.median(samples),
            "doc_latency_p99_ms_naive": percentile(samples, 99)}


class Arrivals:
    """Polls a Text's length (every 2 ms) and records when each index first appears."""

    def __init__(self, text: pycrdt.Text) -> None:
        self.text = text
        self.at: list[float] = []

    async def run(self) -> None:
        while True:
            n = len(self.text)
            if n > len(self.at):
                now = time.perf_counter()
                self.at.extend([now] * (n - len(self.at)))
            await anyio.sleep(0.002)


async def typing_latency(w: Client, r: Client, seconds: float, warmup: float = 2.0,
                         rate: float = 10.0) -> list[float]:
    """A person typing ``rate`` characters/s: each one's latency (ms) after ``warmup``."""
    room = await _room(w, [r])
    async with w.open_doc(room, "typing") as dw, r.open_doc(room, "typing") as dr:
        return await typing_samples(dw, dr, seconds, warmup=warmup, rate=rate)


async def typing_samples(dw: Any, dr: Any, seconds: float, *, warmup: float = 2.0,
                         rate: float = 10.0) -> list[float]:
    """Type ``rate`` characters/s into ``dw``'s text "t" for ``seconds`` and
    return each character's latency (ms) until ``dr`` holds it, after ``warmup``."""
    with anyio.fail_after(60):
        await dw.wait_synced()
        await dr.wait_synced()
    t = dw.doc.get("t", type=pycrdt.Text)
    arrivals = Arrivals(dr.doc.get("t", type=pycrdt.Text))
    typed: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(arrivals.run)
        start = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            await anyio.sleep(max(0.0, start + len(typed) / rate - now))
            typed.append(time.perf_counter())
            t += "x"
        await until(lambda: len(arrivals.at) == len(typed), 120)
        tg.cancel_scope.cancel()
    return [(arrivals.at[i] - at) * 1000 for i, at in enumerate(typed) if at - start >= warmup]


async def default_limits(hs: DevServer, stack: AsyncExitStack, typing_s: float,
                         burst_s: float) -> dict[str, float]:
    """The writer under the default limit: typing latency, then sustained throughput."""
    (w,) = await _users(hs, stack, 1, "dflt", relaxed=False)
    (r,) = await _users(hs, stack, 1, "dfltr")
    samples = await typing_latency(w, r, typing_s)
    say(f"default limits, typing 10/s: p50 {statistics.median(samples):.0f} ms, "
        f"p99 {percentile(samples, 99):.0f} ms ({len(samples)} characters)")
    out = {"doc_latency_p50_ms_default": statistics.median(samples),
           "doc_latency_p99_ms_default": percentile(samples, 99)}
    # The burst is spent by now: type as fast as possible for burst_s seconds.
    n, elapsed, events = await type_for(w, r, burst_s, "default limits")
    out.update({
        "doc_edits_per_s_default": n / elapsed,
        "doc_events_per_1000_edits_default": 1000 * events / n,
    })
    return out


async def type_for(w: Client, r: Client, seconds: float, label: str) -> tuple[int, float, int]:
    """Type as fast as possible for ``seconds``: (edits, seconds until the reader has
    them all, update events sent)."""
    room = await _room(w, [r])
    async with w.open_doc(room, "sustained") as dw, r.open_doc(room, "sustained") as dr:
        with anyio.fail_after(60):
            await dw.wait_synced()
            await dr.wait_synced()
        t = dw.doc.get("t", type=pycrdt.Text)
        rt = dr.doc.get("t", type=pycrdt.Text)
        n = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            t += string.ascii_lowercase[n % 26]
            n += 1
            await anyio.lowlevel.checkpoint()
        typed_s = time.perf_counter() - started
        await until(lambda: len(rt) == n, 600)
        elapsed = time.perf_counter() - started
        events = dw.statistics().update_events_sent
    say(f"{label}, mxsync: {n} edits typed in {typed_s:.1f} s, all at the reader "
        f"after {elapsed:.1f} s, {events} events")
    return n, elapsed, events


async def naive_default(hs: DevServer, stack: AsyncExitStack, burst: int = 10,
                        extra: int = 4) -> dict[str, float]:
    """One event per edit under the default limit: the rate after the burst."""
    (w,) = await _users(hs, stack, 1, "ndflt", relaxed=False)
    (r,) = await _users(hs, stack, 1, "ndfltr")
    room = await _room(w, [r])
    naive = Naive(w, r, room)
    n = burst + extra
    async with anyio.create_task_group() as tg:
        await tg.start(naive.applier)
        tg.start_soon(naive.sender)
        started = time.perf_counter()
        for i in range(n):
            naive.wtext += string.ascii_lowercase[i % 26]
            await anyio.lowlevel.checkpoint()
        await until(lambda: len(naive.rtext) == n, 300)
        tg.cancel_scope.cancel()
    at = [a - started for a in naive.arrived]
    # The events after the burst each waited for a token: rate over their arrivals.
    rate = (len(at) - burst) / (at[-1] - at[burst - 1])
    say(f"default limits, naive: {n} edits, arrivals at " + " ".join(f"{a:.1f}" for a in at)
        + f" s: {rate:.3f} edits/s after the burst")
    return {"doc_edits_per_s_naive_default": rate}


async def open_times(hs: DevServer, stack: AsyncExitStack, n: int) -> dict[str, float]:
    # The history's writer sends 32 at once (Synapse takes ~50% more events/s per
    # room than with 8): its updates land slightly out of order, which openers handle.
    (x,) = await _users(hs, stack, 1, "open", sends_per_room=32)
    f1, f2 = await _users(hs, stack, 2, "opener")
    room = await _room(x, [f1, f2])
    xdoc: pycrdt.Doc[Any] = pycrdt.Doc()
    xt = xdoc.get("t", type=pycrdt.Text)
    updates: list[bytes] = []
    xdoc.observe(lambda e: updates.append(e.update))
    for i in range(n):
        xt.insert(len(xt) // 2 if i % 3 else len(xt), string.ascii_letters[i % 52])
    await (await x.send(room, DOC, proto.encode_declaration(), state_key="hist")).wait()
    started = time.perf_counter()
    handles = await x.send_many([
        OutgoingEvent(room, DOC_UPDATE, proto.encode_update("hist", u)[0], lane=f"l{i % 32}")
        for i, u in enumerate(updates)
    ])
    for h in handles:
        await h.wait()
    say(f"history: {n} update events in {time.perf_counter() - started:.0f} s")
    figures: dict[str, float] = {}
    for client, key in ((f1, "doc_open_ms_replay"), (f2, "doc_open_ms_snapshot")):
        started = time.perf_counter()
        async with client.open_doc(room, "hist") as sdoc:
            with anyio.fail_after(600):
                await sdoc.wait_synced()
            figures[key] = (time.perf_counter() - started) * 1000
            assert str(sdoc.doc.get("t", type=pycrdt.Text)) == str(xt)
            st = sdoc.statistics()
            say(f"{key}: {figures[key]:.0f} ms ({st.load_http_ms} ms in /messages), "
                f"{st.load_events} events read, {st.updates_applied} updates and "
                f"{st.snapshots_applied} snapshots applied")
            if key == "doc_open_ms_replay":
                figures["doc_open_events_replay"] = st.load_events
                # Having replayed everything, this opener posts a snapshot (policy).
                await until(lambda sdoc=sdoc: sdoc.statistics().snapshots_sent >= 1, 120)
            else:
                figures["doc_open_events_snapshot"] = st.load_events
    return figures


async def run(hs: DevServer, *, quick: bool) -> dict[str, float]:
    n_edits = 2000 if quick else 10_000
    n_naive = 150 if quick else 600
    n_latency = 20 if quick else 100
    n_history = 2000 if quick else 10_000
    typing_s, burst_s = (6.0, 4.0) if quick else (30.0, 20.0)
    results: dict[str, float] = {}
    async with AsyncExitStack() as stack:
        w, r = await _users(hs, stack, 2, "doc")
        results.update(await latency(w, r, n_latency))
        results.update(await latency_naive(w, r, n_latency))
        results.update(await throughput(w, r, n_edits))
        results.update(await throughput_naive(w, r, n_naive))
        results.update(await default_limits(hs, stack, typing_s, burst_s))
        results["doc_edits_per_s_naive_default_ceiling"] = RC_MESSAGE_PER_SECOND
        if not quick:
            # The same workloads by a relaxed writer: what the limit alone changes.
            samples = await typing_latency(w, r, typing_s)
            results["doc_latency_p50_ms_typing"] = statistics.median(samples)
            results["doc_latency_p99_ms_typing"] = percentile(samples, 99)
            n, elapsed, _ = await type_for(w, r, burst_s, "relaxed")
            results["doc_edits_per_s_sustained"] = n / elapsed
            results.update(await naive_default(hs, stack))
        results.update(await open_times(hs, stack, n_history))
    return results


def standalone(prog: str, run_fn: Callable[..., Any], argv: list[str] | None = None) -> int:
    """``python -m bench.<prog> [--quick]``: ``run_fn(hs, quick=)`` on a fresh
    devserver with Synapse's default limits; its results printed as JSON."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{prog}")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    async def go() -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix=f"mxsync-{prog}-") as state:
            async with DevServer(state, rate_limits="default") as hs:
                return await run_fn(hs, quick=args.quick)  # type: ignore[no-any-return]

    print(json.dumps(anyio.run(go, backend="asyncio"), indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone("bench_docs", run, argv)


if __name__ == "__main__":
    sys.exit(main())
