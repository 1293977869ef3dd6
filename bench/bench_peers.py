"""mxsync next to the real peer, Matrix-CRDT, on the same Synapse in the same run.

Matrix-CRDT 0.2.0 (the Yjs provider over Matrix; npm, its CommonJS build, with
matrix-js-sdk 19.7.0 and yjs 13.6: the pinned set ``matrix-crdt`` of
``mxsync.dev.npm``, installed into ~/.cache on first use) runs in Node
(bench/peers/matrix_crdt.js, one process per workload), mxsync in this process.
Both use their library defaults, one document per room (mxsync's document is
the default one, as Matrix-CRDT has no names), a writer and a reader on two
accounts, and the same workloads:

- ``fast``: single-character edits typed as fast as possible (2,000), edits/s
  until the reader has them all, and update content bytes per 1,000 edits;
- ``isolated``: one edit after 1 s of quiet, latency p50/p99, content bytes of
  its update event;
- ``typing``: 10 characters/s, each character's latency p50/p99 (after a 2 s
  warm-up), by a relaxed writer and by a writer under Synapse's default
  ``rc_message`` (0.2/s, burst 10);
- ``fast_10k``: 10,000 fast edits; ``paste``: one 100 KB insert (Matrix-CRDT
  stalls on both: each flush is refused as too large, so it gets a deadline);
- ``open``: a fresh client opening a room with 2,000 update events of history,
  with no snapshot, then after the library's own snapshot (mxsync: the first
  opener posts one by its policy; Matrix-CRDT: a client that types posts one
  when the 30th update since the last is its own), ms and events read; the
  open after the snapshot is made by ``SNAPSHOT_OPENS`` fresh clients one
  after the other (the median is the row), and the requests each made before
  its text was there are counted (mxsync: every request of the client that
  started and ended within the open, its sync loop's long poll aside;
  Matrix-CRDT: the /messages pages of ``initialize()``, the only requests it
  makes before the text is there). Both start warm: mxsync's clients sync
  already, and the Node side makes one request (``whoami``) before its clock
  starts, so that neither counts connecting or a first request.

Keys: ``peer_<row>_mxsync`` and ``peer_<row>_mcrdt``; ``rows()`` gives the
table (docs/benchmarks.md). Node missing: the section is skipped with a message.
``python -m bench.bench_peers --open-only`` runs the two open workloads alone,
``--isolated-only`` the isolated edits.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pycrdt

from mxsync import Client, OutgoingEvent
from mxsync.dev import DevServer
from mxsync.dev.npm import ensure_package_set, node_command
from mxsync.dev.server import Credentials
from mxsync.errors import NodeUnavailable
from mxsync.protocol.api import q

from .bench_docs import percentile, typing_samples, until

__all__ = ["rows", "run"]

SCRIPT = Path(__file__).parent / "peers" / "matrix_crdt.js"
MCRDT_UPDATE = "matrix-crdt.doc_update"
#: How long a workload that a library cannot finish is given (it "stalls"; 20 s
#: with ``--quick``).
STALL_S = 60.0
#: Fresh clients that open the document after the snapshot, one after the other.
SNAPSHOT_OPENS = 3


def say(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


class Peers:
    """The users, rooms and Node runs of one peers benchmark."""

    def __init__(self, hs: DevServer, stack: AsyncExitStack, modules: Path) -> None:
        self.hs, self.stack, self.modules = hs, stack, modules
        self._n = 0

    async def creds(self, tag: str, *, relaxed: bool = True) -> Credentials:
        self._n += 1
        creds = await self.hs.register(f"peer{tag}{self._n}x{int(time.time() * 1000) % 10**8}")
        if relaxed:
            await self.hs.override_ratelimit(creds.user_id)
        return creds

    async def client(self, creds: Credentials) -> Client:
        return await self.stack.enter_async_context(
            Client(self.hs.url, creds.user_id, password=creds.password))

    async def room(self, owner: Client, members: list[Credentials]) -> str:
        room = await owner.create_room("peers", invite=[m.user_id for m in members])
        async with aiohttp.ClientSession() as http:
            for m in members:
                async with http.post(f"{self.hs.url}/_matrix/client/v3/join/{q(room)}", json={},
                                     headers={"Authorization": f"Bearer {m.access_token}"}) as r:
                    r.raise_for_status()
        return room

    async def node(self, workload: str, room: str, writer: Credentials | None,
                   reader: Credentials | None, deadline: float = 300.0, **kw: Any
                   ) -> dict[str, Any]:
        def user(c: Credentials | None) -> dict[str, str] | None:
            return None if c is None else {"user_id": c.user_id, "access_token": c.access_token,
                                           "device_id": c.device_id}

        cfg = {"workload": workload, "homeserver": self.hs.url, "room": room,
               "writer": user(writer), "reader": user(reader), **kw}
        env = {**os.environ, "NODE_PATH": str(self.modules)}
        with anyio.fail_after(deadline):
            done = await anyio.run_process([*node_command(), str(SCRIPT), json.dumps(cfg)],
                                           env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"matrix-crdt {workload} failed: {done.stderr.decode()[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return result


# ------------------------------------------------------------------------- mxsync side


async def _pair(p: Peers, *, relaxed_writer: bool = True) -> tuple[Client, Client, str]:
    wc = await p.creds("mw", relaxed=relaxed_writer)
    rc = await p.creds("mr")
    w, r = await p.client(wc), await p.client(rc)
    room = await w.create_room("peers", invite=[r.user_id])
    await r.join(room)
    return w, r, room


async def mx_fast(p: Peers, n: int) -> dict[str, Any]:
    w, r, room = await _pair(p)
    async with w.open_doc(room) as dw, r.open_doc(room) as dr:
        with anyio.fail_after(60):
            await dw.wait_synced()
            await dr.wait_synced()
        t, rt = dw.doc.get("t", type=pycrdt.Text), dr.doc.get("t", type=pycrdt.Text)
        started = time.perf_counter()
        for i in range(n):
            t += string.ascii_lowercase[i % 26]
            await anyio.lowlevel.checkpoint()
        await until(lambda: len(rt) == n, STALL_S * 5)
        elapsed = time.perf_counter() - started
        st = dw.statistics()
    return {"edits_per_s": n / elapsed, "ms": elapsed * 1000,
            "bytes_per_1000_edits": 1000 * st.bytes_sent / n, "events": st.update_events_sent}


async def mx_isolated(p: Peers, n: int, idle: float) -> dict[str, Any]:
    w, r, room = await _pair(p)
    samples: list[float] = []
    async with w.open_doc(room) as dw, r.open_doc(room) as dr:
        with anyio.fail_after(60):
            await dw.wait_synced()
            await dr.wait_synced()
        t, rt = dw.doc.get("t", type=pycrdt.Text), dr.doc.get("t", type=pycrdt.Text)
        await anyio.sleep(idle)
        before = dw.statistics()
        for i in range(n):
            await anyio.sleep(idle)
            started = time.perf_counter()
            t += "x"
            with anyio.fail_after(30):  # polled every 2 ms, as the Node side does
                while len(rt) != i + 1:  # noqa: ASYNC110 - a document, polled
                    await anyio.sleep(0.002)
            samples.append((time.perf_counter() - started) * 1000)
        await dw.flush()
        st = dw.statistics()
    events = st.update_events_sent - before.update_events_sent
    return {"p50_ms": statistics.median(samples), "p99_ms": percentile(samples, 99),
            "bytes_per_edit": (st.bytes_sent - before.bytes_sent) / max(1, events)}


async def mx_typing(p: Peers, seconds: float, *, relaxed: bool, warmup: float = 2.0,
                    rate: float = 10.0) -> dict[str, Any]:
    w, r, room = await _pair(p, relaxed_writer=relaxed)
    async with w.open_doc(room) as dw, r.open_doc(room) as dr:
        samples = await typing_samples(dw, dr, seconds, warmup=warmup, rate=rate)
    return {"p50_ms": statistics.median(samples), "p99_ms": percentile(samples, 99)}


async def mx_paste(p: Peers, chars: int) -> dict[str, Any]:
    w, r, room = await _pair(p)
    async with w.open_doc(room) as dw, r.open_doc(room) as dr:
        with anyio.fail_after(60):
            await dw.wait_synced()
            await dr.wait_synced()
        rt = dr.doc.get("t", type=pycrdt.Text)
        started = time.perf_counter()
        dw.doc.get("t", type=pycrdt.Text).insert(0, "p" * chars)
        await until(lambda: len(rt) == chars, STALL_S)
        return {"ms": (time.perf_counter() - started) * 1000}


def _history(n: int) -> list[bytes]:
    """``n`` single-character updates, inserts in the middle (each depends on earlier)."""
    xdoc: pycrdt.Doc[Any] = pycrdt.Doc()
    xt = xdoc.get("t", type=pycrdt.Text)
    updates: list[bytes] = []
    xdoc.observe(lambda e: updates.append(e.update))
    for i in range(n):
        xt.insert(len(xt) // 2 if i % 3 else len(xt), string.ascii_letters[i % 52])
    return updates


async def _post_history(x: Client, room: str, events: list[OutgoingEvent]) -> None:
    handles = await x.send_many(events)
    with anyio.fail_after(600):
        for h in handles:
            await h.wait()


async def mx_open(p: Peers, n: int, opens: int = SNAPSHOT_OPENS) -> dict[str, Any]:
    from mxsync.protocol import docs as proto
    from mxsync.protocol.types import DOC, DOC_UPDATE

    xc, f1c = await p.creds("mx"), await p.creds("mf")
    fresh_creds = [await p.creds(f"mg{i}") for i in range(opens)]
    x = await p.stack.enter_async_context(
        Client(p.hs.url, xc.user_id, password=xc.password, sends_per_room=32))
    f1 = await p.client(f1c)
    fresh = [await p.client(c) for c in fresh_creds]
    room = await x.create_room("peers", invite=[f1.user_id, *(f.user_id for f in fresh)])
    for joiner in (f1, *fresh):
        await joiner.join(room)
    await (await x.send(room, DOC, proto.encode_declaration(), state_key="default")).wait()
    await _post_history(x, room, [
        OutgoingEvent(room, DOC_UPDATE, proto.encode_update("default", u)[0], lane=f"l{i % 32}")
        for i, u in enumerate(_history(n))])
    out: dict[str, Any] = {}
    started = time.perf_counter()
    async with f1.open_doc(room) as sdoc:
        with anyio.fail_after(600):
            await sdoc.wait_synced()
        out["replay_ms"] = (time.perf_counter() - started) * 1000
        out["replay_events"] = sdoc.statistics().load_events
        # This opener posts a snapshot (its policy).
        await until(lambda: sdoc.statistics().snapshots_sent >= 1
                    and not sdoc.statistics().in_flight, 120)
    samples: list[tuple[float, int, int]] = []
    for client in fresh:
        await anyio.sleep(0.5)
        with client.http.recording() as records:
            started = time.perf_counter()
            async with client.open_doc(room) as sdoc:
                with anyio.fail_after(600):
                    await sdoc.wait_synced()
                done = time.perf_counter()
                events = sdoc.statistics().load_events
        requests = [r for r in records if r.started >= started and r.ended <= done
                    and not r.path.endswith("/sync")]
        samples.append(((done - started) * 1000, events, len(requests)))
        say(f"mxsync snapshot open: {samples[-1][0]:.1f} ms, {events} events, requests "
            + ", ".join(f"{r.method} {r.path.rsplit('/', 1)[-1]} "
                        f"{(r.ended - r.started) * 1000:.0f} ms" for r in requests))
    out["snapshot_ms"] = statistics.median(s[0] for s in samples)
    out["snapshot_events"] = statistics.median(s[1] for s in samples)
    out["snapshot_requests"] = statistics.median(s[2] for s in samples)
    out["snapshot_samples_ms"] = [round(s[0], 1) for s in samples]
    return out


# ------------------------------------------------------------------ Matrix-CRDT side


async def mc_pair(p: Peers, *, relaxed_writer: bool = True) -> tuple[str, Credentials,
                                                                      Credentials]:
    owner = await p.client(await p.creds("mco"))
    wc = await p.creds("mcw", relaxed=relaxed_writer)
    rc = await p.creds("mcr")
    return await p.room(owner, [wc, rc]), wc, rc


async def mc_open(p: Peers, n: int, opens: int = SNAPSHOT_OPENS) -> dict[str, Any]:
    import base64

    xc = await p.creds("mcx")
    x = await p.stack.enter_async_context(
        Client(p.hs.url, xc.user_id, password=xc.password, sends_per_room=32))
    wc, f1c = await p.creds("mcs"), await p.creds("mcf")
    fresh = [await p.creds(f"mcg{i}") for i in range(opens)]
    room = await p.room(x, [wc, f1c, *fresh])
    await _post_history(x, room, [
        OutgoingEvent(room, MCRDT_UPDATE, {"update": base64.b64encode(u).decode()},
                      lane=f"l{i % 32}")
        for i, u in enumerate(_history(n))])
    replay = await p.node("open", room, None, f1c, warm=True)
    snap = await p.node("snapshot", room, wc, None)
    afters = []
    for c in fresh:
        await anyio.sleep(0.5)
        afters.append(await p.node("open", room, None, c, warm=True))
    if os.environ.get("MXSYNC_BENCH_COLD_NODE"):  # for the record: the same, cold
        cold = [await p.node("open", room, None, c) for c in fresh]
        say(f"matrix-crdt snapshot open, cold Node: {[round(a['ms'], 1) for a in cold]}")
    say(f"matrix-crdt open: replay {replay}, snapshot {snap}, after {afters}")
    if not snap["snapshots"]:
        nan = float("nan")
        return {"replay_ms": replay["ms"], "replay_events": replay["events_read"],
                "snapshot_ms": nan, "snapshot_events": nan, "snapshot_requests": nan}
    return {"replay_ms": replay["ms"], "replay_events": replay["events_read"],
            "snapshot_ms": statistics.median(a["ms"] for a in afters),
            "snapshot_events": statistics.median(a["events_read"] for a in afters),
            # initialize() makes no request but its /messages pages.
            "snapshot_requests": statistics.median(a["pages"] for a in afters),
            "snapshot_samples_ms": [round(a["ms"], 1) for a in afters]}


# ----------------------------------------------------------------------------- the run

#: (row, key, unit, higher is better)
ROWS: list[tuple[str, str, str, bool]] = [
    ("fast edits, edits/s", "fast_edits_per_s", "edits/s", True),
    ("fast edits, update content bytes per 1,000 edits", "fast_bytes_per_1000", "B", False),
    ("isolated edit after 1 s idle, p50", "isolated_p50_ms", "ms", False),
    ("isolated edit after 1 s idle, p99", "isolated_p99_ms", "ms", False),
    ("update content bytes for one isolated edit", "isolated_bytes", "B", False),
    ("typing 10 chars/s (relaxed), p50", "typing_p50_ms", "ms", False),
    ("typing 10 chars/s (relaxed), p99", "typing_p99_ms", "ms", False),
    ("typing under Synapse's default rate limit, p50", "typing_default_p50_ms", "ms", False),
    ("typing under Synapse's default rate limit, p99", "typing_default_p99_ms", "ms", False),
    ("10,000 fast edits, until all arrived", "fast10k_ms", "ms", False),
    ("100 KB paste, until it arrived", "paste_ms", "ms", False),
    ("open 2,000 events, no snapshot", "open_replay_ms", "ms", False),
    ("open 2,000 events, no snapshot: events read", "open_replay_events", "events", False),
    ("open after the library's own snapshot", "open_snapshot_ms", "ms", False),
    ("open after the library's own snapshot: events read", "open_snapshot_events", "events",
     False),
    ("open after the library's own snapshot: requests before the text", "open_snapshot_requests",
     "requests", False),
]


def rows(results: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(row, mxsync, Matrix-CRDT, advantage of mxsync: > 1 means mxsync is ahead)."""
    out = []
    for label, key, _unit, higher in ROWS:
        mx, mc = results.get(f"peer_{key}_mxsync"), results.get(f"peer_{key}_mcrdt")
        if not isinstance(mx, (int, float)) or not isinstance(mc, (int, float)):
            continue
        if mx != mx or mc != mc:  # a stall (NaN): no ratio
            ratio = float("nan")
        elif higher:
            ratio = mx / mc if mc else float("inf")
        else:
            ratio = mc / mx if mx else float("inf")
        out.append((label, mx, mc, ratio))
    return out


async def _isolated_rows(p: Peers, n: int,
                         put: Callable[[str, float | None, float | None], None]) -> None:
    mx = await mx_isolated(p, n, 1.0)
    room, w, r = await mc_pair(p)
    mc = await p.node("isolated", room, w, r, n=n, idle_ms=1000)
    say(f"isolated: mxsync {mx}, matrix-crdt {mc}")
    put("isolated_p50_ms", mx["p50_ms"], mc["p50_ms"])
    put("isolated_p99_ms", mx["p99_ms"], mc["p99_ms"])
    put("isolated_bytes", mx["bytes_per_edit"], mc["bytes_per_edit"])


async def run(hs: DevServer, *, quick: bool, only: str | None = None) -> dict[str, float]:
    """Every workload, or ``only`` one of them: "isolated" or "open"."""
    try:
        modules = ensure_package_set("matrix-crdt")
        node_command()
    except NodeUnavailable as exc:
        say(f"SKIPPED: the peers section needs Node.js and npm ({exc})")
        return {}
    n_fast = 2000
    # Enough that the p99 is not the single slowest edit (with 30 it was).
    n_isolated = 20 if quick else 100
    typing_s = 6.0 if quick else 20.0
    n_open = 2000
    big = 10_000
    # How long Matrix-CRDT is given on the two workloads it never finishes.
    stall_ms = (20.0 if quick else STALL_S) * 1000
    res: dict[str, float] = {}

    def put(key: str, mx: float | None, mc: float | None) -> None:
        res[f"peer_{key}_mxsync"] = float("nan") if mx is None else float(mx)
        res[f"peer_{key}_mcrdt"] = float("nan") if mc is None else float(mc)

    async with AsyncExitStack() as stack:
        p = Peers(hs, stack, modules)

        if only == "open":
            await _open_rows(p, n_open, put)
            return res
        await _isolated_rows(p, n_isolated, put)
        if only == "isolated":
            return res

        mx = await mx_fast(p, n_fast)
        room, w, r = await mc_pair(p)
        mc = await p.node("fast", room, w, r, n=n_fast, deadline_ms=stall_ms)
        say(f"fast: mxsync {mx}, matrix-crdt {mc}")
        put("fast_edits_per_s", mx["edits_per_s"], mc["edits_per_s"])
        put("fast_bytes_per_1000", mx["bytes_per_1000_edits"], mc["bytes_per_1000_edits"])

        for relaxed, key in ((True, "typing"), (False, "typing_default")):
            mx = await mx_typing(p, typing_s, relaxed=relaxed)
            room, w, r = await mc_pair(p, relaxed_writer=relaxed)
            mc = await p.node("typing", room, w, r, seconds=typing_s, rate=10, warmup_s=2,
                              deadline_ms=120_000)
            say(f"{key}: mxsync {mx}, matrix-crdt {mc}")
            put(f"{key}_p50_ms", mx["p50_ms"], mc["p50_ms"])
            put(f"{key}_p99_ms", mx["p99_ms"], mc["p99_ms"])

        mx = await mx_fast(p, big)
        room, w, r = await mc_pair(p)
        mc = await p.node("fast", room, w, r, n=big, deadline_ms=stall_ms)
        say(f"10k fast: mxsync {mx}, matrix-crdt {mc}")
        put("fast10k_ms", mx["ms"], mc["ms"] if mc["completed"] else None)

        mx = await mx_paste(p, 100_000)
        room, w, r = await mc_pair(p)
        mc = await p.node("paste", room, w, r, chars=100_000, deadline_ms=stall_ms)
        say(f"paste: mxsync {mx}, matrix-crdt {mc}")
        put("paste_ms", mx["ms"], mc["ms"] if mc["completed"] else None)

        await _open_rows(p, n_open, put)
    return res


async def _open_rows(p: Peers, n: int, put: Callable[[str, float | None, float | None], None]
                     ) -> None:
    mx = await mx_open(p, n)
    mc = await mc_open(p, n)
    say(f"open: mxsync {mx}, matrix-crdt {mc}")
    for k in ("replay_ms", "replay_events", "snapshot_ms", "snapshot_events",
              "snapshot_requests"):
        put(f"open_{k}", mx[k], mc[k])


def print_rows(results: dict[str, Any]) -> None:
    print(f"{'row':<55} {'mxsync':>10} {'Matrix-CRDT':>12} {'ratio':>8}")
    for label, mx, mc, ratio in rows(results):
        mc_s = "stalls" if mc != mc else f"{mc:,.1f}"
        print(f"{label:<55} {mx:>10,.1f} {mc_s:>12} {ratio:>7.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_peers")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--open-only", action="store_true",
                        help="only the two open workloads (2,000 events, then a snapshot)")
    parser.add_argument("--isolated-only", action="store_true",
                        help="only the isolated edits (after 1 s of quiet each)")
    args = parser.parse_args(argv)

    async def go() -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="mxsync-bench-peers-") as state:
            async with DevServer(state, rate_limits="default") as hs:
                only = "open" if args.open_only else "isolated" if args.isolated_only else None
                return await run(hs, quick=args.quick, only=only)

    results = anyio.run(go, backend="asyncio")
    print(json.dumps(results, indent=2, sort_keys=True))
    print_rows(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
