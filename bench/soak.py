"""Soak: mixed load against a real Synapse for a long time; does the client's memory stay flat?

    python -m bench.soak --minutes 30 [--interval 30] [--out docs/soak.md]

One process runs four mxsync clients against an embedded Synapse (DevServer,
Synapse's default rate limits, lifted per user for the writers, as an
operator does for bots and bridges):

- two editors of one document (``SyncedDoc``), each typing a few characters
  ``--edit-hz`` times a second at random places and deleting about as much, so
  the text stays around ``--text-len`` characters while its history grows;
- one device (``Publisher``) publishing ``--readings-hz`` readings a second over
  five sensors (float, int, bool, str);
- one dashboard (``Subscriber``) that consumes every live reading and checks
  that each (session, seq) comes once and in order.

Every ``--interval`` seconds it samples the RSS of this process (all four
clients; Synapse is another process and is sampled separately), the Python
heap as tracemalloc does not see it (``gc`` object count), the document's
encoded state size and the counters. At the end it checks convergence (both
editors equal, a fresh client's cold open equal) and that the dashboard saw
every published reading once, prints a table and writes ``--out`` (Markdown)
and ``--json``.

The verdict on memory is the least-squares slope of RSS over the second half of
the run (after warm-up: imports, caches, the bounded LRUs of event ids filling),
in MB per hour, next to the first, last and highest samples.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pycrdt

import mxsync.docs.replica as docs_module
from mxsync import Client
from mxsync.dev import DevServer
from mxsync.protocol.docs import decode_state_vector

__all__ = ["main", "run"]

SENSORS = ("temp", "count", "door", "mode", "power")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):  # not glibc >= 2.33
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def malloc_mb() -> float | None:
    """Bytes glibc malloc has handed out and not got back, in MB.

    That is the live native heap: pycrdt's Rust structures, SQLite's page cache
    and Python's large objects (pymalloc's small-object arenas are mmap'd apart
    and show in the gc object count instead). Unlike RSS it does not count
    memory freed but kept by the allocator (fragmentation), so a leak shows here
    and a fragmented heap does not.
    """
    if _MALLINFO2 is None:
        return None
    mi = _MALLINFO2()
    return (mi.uordblks + mi.hblkhd) / 2**20


def _sqlite_memory_used() -> Any:
    try:
        import _sqlite3

        fn = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int64
    return fn


_SQLITE_MEMORY_USED = _sqlite_memory_used()


def sqlite_mb() -> float | None:
    """Memory SQLite holds in this process (all connections: page caches, schema,
    statements), in MB; part of ``malloc_mb``."""
    return None if _SQLITE_MEMORY_USED is None else _SQLITE_MEMORY_USED() / 2**20


def malloc_trim() -> None:
    """Hand the memory malloc holds free back to the system (glibc ``malloc_trim``).

    Diagnostic only (``--trim``): after it, RSS counts live memory plus what
    fragmentation pins, not memory freed and kept for reuse.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_mb(pid: int | None = None) -> float | None:
    """Resident set size of ``pid`` (this process by default), in MB, from /proc."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    malloc_mb: float | None
    sqlite_mb: float | None
    synapse_rss_mb: float | None
    gc_objects: int
    doc_state_bytes: int
    text_len: int
    edits: int
    update_events: int
    snapshots: int
    published: int
    received: int
    requests: int


@dataclass
class Tally:
    """What the dashboard saw (one publisher session): batch numbers only go up."""

    received: int = 0
    batches: int = 0
    out_of_order: int = 0
    last_seq: int = -1


def slope_mb_per_h(samples: list[Sample], field: str = "rss_mb") -> float:
    """Least-squares slope of ``field`` (RSS by default) against time, MB per hour."""
    samples = [s for s in samples if getattr(s, field) is not None]
    if len(samples) < 2:
        return 0.0
    xs = [s.t_s for s in samples]
    ys = [getattr(s, field) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600


def _edit_once(text: pycrdt.Text, rng: random.Random, tag: str, text_len: int) -> None:
    """One edit: insert 1-3 characters at a random place, or (above ``text_len``)
    often delete 1-3, so the text stays near ``text_len`` while its history grows."""
    n = len(text)
    if n > text_len and rng.random() < 0.6:
        at = rng.randrange(0, n - 3)
        del text[at : at + rng.randint(1, 3)]
    else:
        piece = tag + rng.choice(string.ascii_lowercase) * rng.randint(0, 2)
        text.insert(rng.randint(0, n), piece)


async def _editor(sdoc: Any, seed: int, hz: float, text_len: int, stop: anyio.Event,
                  counter: list[int]) -> None:
    rng = random.Random(seed)
    text = sdoc.doc.get("t", type=pycrdt.Text)
    tag = string.ascii_letters[seed % 52]
    period = 1.0 / hz
    next_at = time.monotonic()
    while not stop.is_set():
        _edit_once(text, rng, tag, text_len)
        counter[0] += 1
        next_at += period
        await anyio.sleep(max(0.0, next_at - time.monotonic()))


def crdt_alone(edits: int, text_len: int) -> dict[str, float]:
    """The CRDT's own growth, without mxsync: the soak's two editors' edits
    (same generator, same seeds) on two bare pycrdt documents that exchange
    every update, as the two replicas in the soak do. Run in a fresh process
    (``--calibrate``) so that nothing else shares its heap."""
    docs = [pycrdt.Doc(), pycrdt.Doc()]
    queue: list[tuple[int, bytes]] = []
    for i, d in enumerate(docs):
        d.observe(lambda ev, i=i: queue.append((i, ev.update)))
    texts = [d.get("t", type=pycrdt.Text) for d in docs]
    rngs = [random.Random(1), random.Random(2)]
    tags = [string.ascii_letters[1], string.ascii_letters[2]]
    m0, r0 = malloc_mb() or 0.0, rss_mb() or 0.0
    for k in range(edits):
        i = k % 2
        _edit_once(texts[i], rngs[i], tags[i], text_len)
        while queue:
            src, update = queue.pop()
            docs[1 - src].apply_update(update)
    gc.collect()
    m1, r1 = malloc_mb() or 0.0, rss_mb() or 0.0
    return {"edits": edits, "malloc_mb": round(m1 - m0, 2), "rss_mb": round(r1 - r0, 2),
            "kb_per_edit": round((m1 - m0) * 1024 / max(edits, 1), 4),
            "state_bytes": len(docs[0].get_update())}


async def _device(pub: Any, hz: float, stop: anyio.Event, counter: list[int]) -> None:
    rng = random.Random(99)
    temp, count = 20.0, 0
    period = 10 / hz  # five sensors, two readings each per tick
    next_at = time.monotonic()
    while not stop.is_set():
        for _ in range(2):
            temp += rng.uniform(-0.05, 0.05)
            count += rng.randrange(5)
            pub.publish("temp", round(temp, 2))
            pub.publish("count", count)
            pub.publish("door", rng.random() < 0.05)
            pub.publish("mode", rng.choice(("auto", "eco", "boost")))
            pub.publish("power", rng.randrange(0, 4000))
            counter[0] += 5
        next_at += period
        await anyio.sleep(max(0.0, next_at - time.monotonic()))


async def _dashboard(sub: Any, tally: Tally) -> None:
    async for r in sub:
        tally.received += 1
        if r.seq != tally.last_seq:
            if r.seq < tally.last_seq:
                tally.out_of_order += 1
            tally.last_seq = r.seq
            tally.batches += 1


def _trace_growth(first: Any, log: Any) -> Any:
    """With ``--trace``: what grew on the Python heap since the first snapshot."""
    import tracemalloc

    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    if first is None:
        return snap
    for stat in snap.compare_to(first, "traceback")[:8]:
        print(f"    +{stat.size_diff / 1024:8.1f} KiB {stat.count_diff:+7d} blocks",
              file=log)
        for line in stat.traceback.format()[-8:]:
            print("        " + line, file=log)
    print(f"    heap now {sum(s.size for s in snap.statistics('filename')) / 2**20:.1f} MiB",
          file=log, flush=True)
    return first


async def _until(cond: Any) -> None:
    while not cond():  # noqa: ASYNC110 - a predicate over several objects, polled
        await anyio.sleep(0.1)


def _doc_values(doc: pycrdt.Doc) -> str:
    return str(doc.get("t", type=pycrdt.Text))


async def run(
    *,
    minutes: float,
    interval: float,
    edit_hz: float,
    readings_hz: float,
    text_len: int,
    drain_timeout: float = 300.0,
    seen_cap: int | None = None,
    trace: bool = False,
    trim_before_sample: bool = False,
    log: Any = sys.stdout,
) -> dict[str, Any]:
    started_wall = time.time()
    if seen_cap is not None:
        docs_module._SEEN_MAX = seen_cap  # type: ignore[misc]
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="mxsync-soak-") as tmp:
        state = Path(tmp)
        async with DevServer(state / "hs", rate_limits="default") as hs:
            tag = uuid.uuid4().hex[:6]
            users = {}
            for role in ("ed1", "ed2", "dev", "dash"):
                users[role] = await hs.register(f"soak{role}{tag}")
            for role in ("ed1", "ed2", "dev"):
                await hs.override_ratelimit(users[role].user_id)

            def client(role: str) -> Client:
                c = users[role]
                cl = Client(hs.url, c.user_id, password=c.password,
                            store_path=state / f"{role}.db")
                if seen_cap is not None:
                    # The event-id LRUs fill for ~30 min at this load before they
                    # stop growing; a small cap shows what the RSS does after that.
                    cl.sync._seen_per_room = seen_cap
                return cl

            stop = anyio.Event()
            drain_error: dict[str, Any] | None = None
            edits = [[0], [0]]
            published = [0]
            tally = Tally()
            async with (
                client("ed1") as ed1, client("ed2") as ed2,
                client("dev") as dev, client("dash") as dash,
            ):
                clients = (ed1, ed2, dev, dash)
                room = await ed1.create_room(
                    "soak", invite=[users[r].user_id for r in ("ed2", "dev", "dash")],
                    writers=[users[r].user_id for r in ("ed1", "ed2", "dev")],
                )
                for c in (ed2, dev, dash):
                    await c.join(room)
                async with (
                    ed1.open_doc(room, "soak") as d1,
                    ed2.open_doc(room, "soak") as d2,
                    dash.subscribe(room) as sub,
                    dev.publisher(room, device="soak-dev", precision=2) as pub,
                ):
                    with anyio.fail_after(60):
                        await d1.wait_synced()
                        await d2.wait_synced()
                    t0 = time.monotonic()
                    end = t0 + minutes * 60

                    def sample() -> Sample:
                        if trim_before_sample:
                            malloc_trim()
                        st1 = d1.statistics()
                        st2 = d2.statistics()
                        return Sample(
                            t_s=round(time.monotonic() - t0, 1),
                            rss_mb=round(rss_mb() or 0.0, 1),
                            malloc_mb=(None if (m := malloc_mb()) is None else round(m, 1)),
                            sqlite_mb=(None if (q := sqlite_mb()) is None else round(q, 1)),
                            synapse_rss_mb=(None if hs.pid is None
                                            else round(rss_mb(hs.pid) or 0.0, 1)),
                            gc_objects=len(gc.get_objects()),
                            doc_state_bytes=len(d1.doc.get_update()),
                            text_len=len(_doc_values(d1.doc)),
                            edits=edits[0][0] + edits[1][0],
                            update_events=st1.update_events_sent + st2.update_events_sent,
                            snapshots=st1.snapshots_sent + st2.snapshots_sent,
                            published=published[0],
                            received=tally.received,
                            requests=sum(c.http.requests for c in clients),
                        )

                    def show(s: Sample) -> None:
                        print(f"{s.t_s:7.0f}s rss {s.rss_mb:6.1f} MB  malloc "
                              f"{s.malloc_mb or 0:6.1f} MB  sqlite {s.sqlite_mb or 0:5.1f} MB  "
                              "synapse "
                              f"{s.synapse_rss_mb or 0:6.1f} MB  gc {s.gc_objects:8d}  "
                              f"doc {s.doc_state_bytes:8d} B  edits {s.edits:7d}  "
                              f"upd {s.update_events:6d}  snaps {s.snapshots:4d}  "
                              f"pub {s.published:8d}  recv {s.received:8d}",
                              file=log, flush=True)

                    async with anyio.create_task_group() as tg:
                        if edit_hz > 0:
                            tg.start_soon(_editor, d1, 1, edit_hz, text_len, stop, edits[0])
                            tg.start_soon(_editor, d2, 2, edit_hz, text_len, stop, edits[1])
                        if readings_hz > 0:
                            tg.start_soon(_device, pub, readings_hz, stop, published)
                        tg.start_soon(_dashboard, sub, tally)
                        samples.append(sample())
                        show(samples[-1])
                        first_snap = None
                        while time.monotonic() < end:
                            await anyio.sleep(min(interval, max(0.0, end - time.monotonic())))
                            samples.append(sample())
                            show(samples[-1])
                            if trace:
                                first_snap = _trace_growth(first_snap, log)
                        stop.set()
                        # Drain: everything published and edited reaches the others.
                        try:
                            with anyio.fail_after(drain_timeout):
                                await pub.flush()
                                await d1.flush()
                                await d2.flush()
                                # State vectors compared decoded: their encoding
                                # does not order the clients.
                                await _until(lambda: tally.received >= published[0]
                                             and _doc_values(d1.doc) == _doc_values(d2.doc)
                                             and decode_state_vector(d1.doc.get_state())
                                             == decode_state_vector(d2.doc.get_state()))
                        except TimeoutError:
                            drain_error = {
                                "published": published[0], "received": tally.received,
                                "pub": msgspec.to_builtins(pub.statistics()),
                                "sub": msgspec.to_builtins(sub.statistics()),
                                "d1": msgspec.to_builtins(d1.statistics()),
                                "d2": msgspec.to_builtins(d2.statistics()),
                                "d1_sv": d1.doc.get_state().hex(),
                                "d2_sv": d2.doc.get_state().hex(),
                                "texts_equal": _doc_values(d1.doc) == _doc_values(d2.doc),
                                "outbox": [c.outbox.statistics() for c in clients],
                                "status": [str(c.status) for c in clients],
                            }
                            print("DRAIN TIMED OUT", json.dumps(drain_error, default=str),
                                  file=log, flush=True)
                        tg.cancel_scope.cancel()
                    expected = _doc_values(d1.doc)
                    final_doc = {
                        "text_len": len(expected),
                        "state_bytes": len(d1.doc.get_update()),
                        "d1": msgspec.to_builtins(d1.statistics()),
                        "d2": msgspec.to_builtins(d2.statistics()),
                    }
                    sub_stats = sub.statistics()
                    pub_stats = pub.statistics()
            # A fresh client opens the document cold: snapshot plus the updates after it.
            fresh_user = await hs.register(f"soakfresh{tag}")
            async with Client(hs.url, users["ed1"].user_id,
                              password=users["ed1"].password) as owner:
                await owner.invite(room, fresh_user.user_id)
            async with Client(hs.url, fresh_user.user_id, password=fresh_user.password) as fc:
                await fc.join(room)
                async with fc.open_doc(room, "soak", read_only=True) as df:
                    with anyio.fail_after(120):
                        await df.wait_synced()
                    fresh_equal = _doc_values(df.doc) == expected
                    fresh_stats = df.statistics()
    half = [s for s in samples if s.t_s >= samples[-1].t_s / 2]
    rss = [s.rss_mb for s in samples]
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started_wall)),
        "minutes": minutes,
        "interval_s": interval,
        "edit_hz_per_editor": edit_hz,
        "readings_hz": readings_hz,
        "seen_cap": seen_cap,
        "trim": trim_before_sample,
        "samples": [s.__dict__ for s in samples],
        "rss_first_mb": rss[0],
        "rss_last_mb": rss[-1],
        "rss_max_mb": max(rss),
        "rss_slope_mb_per_h": round(slope_mb_per_h(samples), 2),
        "rss_slope_second_half_mb_per_h": round(slope_mb_per_h(half), 2),
        "malloc_first_mb": samples[0].malloc_mb,
        "malloc_last_mb": samples[-1].malloc_mb,
        "malloc_slope_second_half_mb_per_h": round(slope_mb_per_h(half, "malloc_mb"), 2),
        "sqlite_first_mb": samples[0].sqlite_mb,
        "sqlite_last_mb": samples[-1].sqlite_mb,
        "sqlite_slope_second_half_mb_per_h": round(slope_mb_per_h(half, "sqlite_mb"), 2),
        "edits_per_h_second_half": round(
            (half[-1].edits - half[0].edits) / max(half[-1].t_s - half[0].t_s, 1e-9) * 3600),
        "edits": samples[-1].edits,
        "published": published[0],
        "received": tally.received,
        "batches": tally.batches,
        "duplicates": sub_stats.duplicates,
        "gaps": sub_stats.gaps,
        "out_of_order": tally.out_of_order,
        "publisher": msgspec.to_builtins(pub_stats),
        "doc": final_doc,
        "fresh_open_equal": fresh_equal,
        "fresh_open_stats": {k: getattr(fresh_stats, k) for k in
                             ("load_ms", "load_events", "snapshots_applied", "updates_applied",
                              "skipped")},
        "drained": drain_error is None,
        "drain_error": drain_error,
        "pid": os.getpid(),
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Soak: mixed load, memory over time",
        "",
        f"`python -m bench.soak --minutes {res['minutes']:g}` started {res['started']}: "
        f"two editors of one document ({res['edit_hz_per_editor']:g} edits/s each), one "
        f"device publishing {res['readings_hz']:g} readings/s, one dashboard subscribed; "
        "four clients in one process against an embedded Synapse (default rate limits, "
        "lifted for the three writers). RSS is the clients' process; Synapse is sampled "
        "apart."
        + ("" if res.get("seen_cap") is None else
           f" Event-id LRUs capped at {res['seen_cap']:,} (`--seen-cap`).")
        + (" `malloc_trim(0)` before each sample (`--trim`)." if res.get("trim") else ""),
        "",
        "| t (s) | client RSS (MB) | client malloc (MB) | of which SQLite (MB) "
        "| Synapse RSS (MB) | gc objects "
        "| doc state (B) | edits | update events | snapshots | readings published "
        "| readings received |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in res["samples"]:
        lines.append(
            f"| {s['t_s']:.0f} | {s['rss_mb']:.1f} | {s['malloc_mb'] or 0:.1f} "
            f"| {s['sqlite_mb'] or 0:.1f} "
            f"| {s['synapse_rss_mb'] or 0:.1f} "
            f"| {s['gc_objects']:,} | {s['doc_state_bytes']:,} | {s['edits']:,} "
            f"| {s['update_events']:,} | {s['snapshots']:,} | {s['published']:,} "
            f"| {s['received']:,} |"
        )
    lines += [
        "",
        f"- Client RSS: first {res['rss_first_mb']:.1f} MB, last {res['rss_last_mb']:.1f} MB, "
        f"max {res['rss_max_mb']:.1f} MB; slope {res['rss_slope_mb_per_h']:+.2f} MB/h over "
        f"the whole run, {res['rss_slope_second_half_mb_per_h']:+.2f} MB/h over the second "
        "half.",
        f"- Client malloc (live native heap, see `malloc_mb`): first "
        f"{res['malloc_first_mb'] or 0:.1f} MB, last {res['malloc_last_mb'] or 0:.1f} MB; "
        f"slope {res['malloc_slope_second_half_mb_per_h']:+.2f} MB/h over the second half; "
        f"of it SQLite {res['sqlite_first_mb'] or 0:.1f} -> {res['sqlite_last_mb'] or 0:.1f} MB, "
        f"{res['sqlite_slope_second_half_mb_per_h']:+.2f} MB/h over the second half.",
        *_crdt_lines(res),
        f"- Edits: {res['edits']:,}; both editors and a fresh cold open converged: "
        f"{'yes' if res['fresh_open_equal'] else 'NO'} (fresh open: "
        f"{res['fresh_open_stats']['load_events']} events read, "
        f"{res['fresh_open_stats']['load_ms']:.0f} ms).",
        f"- Readings: {res['published']:,} published, {res['received']:,} received live in "
        f"{res['batches']:,} batches; duplicates {res['duplicates']}, gaps {res['gaps']}, "
        f"out of order {res['out_of_order']}.",
        "" if res["drained"] else
        f"- **The drain after the load timed out**: {json.dumps(res['drain_error'])[:2000]}",
        "",
    ]
    return "\n".join(lines)


def _crdt_lines(res: dict[str, Any]) -> list[str]:
    cal = res.get("crdt_alone")
    if not cal:
        return []
    crdt_slope = cal["kb_per_edit"] * res["edits_per_h_second_half"] / 1024
    own = res["malloc_slope_second_half_mb_per_h"] - crdt_slope
    res["crdt_slope_mb_per_h"] = round(crdt_slope, 2)
    res["own_malloc_slope_mb_per_h"] = round(own, 2)
    return [
        f"- The CRDT alone (`--calibrate`: the same {cal['edits']:,} edits on two bare pycrdt "
        f"documents in a fresh process): malloc +{cal['malloc_mb']:.1f} MB, "
        f"{cal['kb_per_edit']:.3f} KB per edit for the two replicas, i.e. "
        f"{crdt_slope:+.2f} MB/h at this run's {res['edits_per_h_second_half']:,} edits/h; "
        f"what is left of the malloc slope for mxsync itself: **{own:+.2f} MB/h**.",
    ]


def calibrate(edits: int, text_len: int) -> dict[str, float] | None:
    """``crdt_alone`` in a fresh interpreter, so the soak's heap does not blur it."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--calibrate", str(edits),
         "--text-len", str(text_len)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    if proc.returncode != 0:
        print(f"calibration failed: {proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--edit-hz", type=float, default=5.0,
                        help="edits/s per editor (0: no editing)")
    parser.add_argument("--readings-hz", type=float, default=100.0,
                        help="readings/s of the device (0: none)")
    parser.add_argument("--text-len", type=int, default=2000)
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds the final drain may take")
    parser.add_argument("--seen-cap", type=int, default=None,
                        help="cap the event-id LRUs (sync: 4,096 per room; documents: "
                             "8,192) at this many, so that they are full early")
    parser.add_argument("--trace", action="store_true",
                        help="tracemalloc (slow): print what grew on the heap each sample")
    parser.add_argument("--trim", action="store_true",
                        help="malloc_trim(0) before each sample (diagnostic: RSS without "
                             "the free memory malloc keeps)")
    parser.add_argument("--out", default="docs/soak.md", help="Markdown report ('' for none)")
    parser.add_argument("--json", help="also write the results as JSON")
    parser.add_argument("--calibrate", type=int, metavar="EDITS",
                        help="only measure the CRDT alone for EDITS edits; print JSON")
    args = parser.parse_args(argv)
    if args.calibrate is not None:
        print(json.dumps(crdt_alone(args.calibrate, args.text_len)))
        return 0
    if args.trace:
        import tracemalloc

        tracemalloc.start(12)
    res = anyio.run(
        lambda: run(minutes=args.minutes, interval=args.interval, edit_hz=args.edit_hz,
                    readings_hz=args.readings_hz, text_len=args.text_len,
                    drain_timeout=args.drain_timeout, seen_cap=args.seen_cap,
                    trace=args.trace, trim_before_sample=args.trim),
        backend="asyncio",
    )
    if res["edits"]:
        res["crdt_alone"] = calibrate(res["edits"], args.text_len)
    report = markdown(res)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    ok = (res["drained"] and res["fresh_open_equal"] and res["received"] == res["published"]
          and res["duplicates"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
