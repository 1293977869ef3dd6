"""The gap repair's ordering and stop rules, against /sync and /messages answers
shaped as Synapse 1.163 gives them (recorded around a federation heal), with a
fake of the Http call: no server.

The room is a list in topological order (what /messages walks); tokens are
``tN``, "right before position N". A backwards page from ``tN`` answers the
events at N-1, N-2, ... newest first with ``end`` right before the last one,
and no ``end`` at the start of the room, as Synapse does.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from mxsync.engine.store import Store
from mxsync.engine.sync import SyncLoop
from mxsync.errors import TransientError
from mxsync.protocol.api import Request

ROOM = "!r:hs1"
T = "org.mxsync.test"


def ev(name: str, *, state: bool = False) -> dict[str, Any]:
    raw: dict[str, Any] = {"event_id": f"${name}", "sender": "@w:hs1", "type": T,
                           "content": {"n": name}, "origin_server_ts": 1}
    if state:
        raw.update(type="m.room.power_levels", state_key="", content={"users": {}})
    return raw


class FakeHomeserver:
    """Answers /sync from a script and /messages from ``topo``; records requests."""

    def __init__(self, topo: list[dict[str, Any]], syncs: list[dict[str, Any]],
                 *, fail_messages_at: int | None = None) -> None:
        self.topo = topo
        self.syncs = syncs
        self.fail_at = fail_messages_at
        self.requests: list[Request] = []
        self.messages = 0
        #: Event ids the server does not have yet (a backfill brings them).
        self.hidden: set[str] = set()

    async def call(self, req: Request, **_: Any) -> dict[str, Any]:
        self.requests.append(req)
        assert req.query is not None
        if req.path.endswith("/sync"):
            return self.syncs.pop(0) if self.syncs else {"next_batch": req.query["since"]}
        assert req.path.endswith("/messages"), req.path
        self.messages += 1
        if self.messages == self.fail_at:
            raise TransientError("502 bad gateway")
        assert req.query["dir"] == "b"
        assert "to" not in req.query  # never a stream bound (backfilled events: negative)
        pos = int(req.query["from"][1:])
        lo = max(0, pos - req.query["limit"])
        chunk = [e for e in self.topo[lo:pos][::-1] if e["event_id"] not in self.hidden]
        answer: dict[str, Any] = {"chunk": chunk, "start": req.query["from"]}
        if lo > 0:
            answer["end"] = f"t{lo}"
        return answer


def limited(timeline: list[dict[str, Any]], prev: int, state: list[dict[str, Any]] = (),
            batch: str = "s2") -> dict[str, Any]:
    room = {"state": {"events": list(state)},
            "timeline": {"events": timeline, "limited": True, "prev_batch": f"t{prev}"}}
    return {"next_batch": batch, "rooms": {"join": {ROOM: room}}}


def first(timeline: list[dict[str, Any]]) -> dict[str, Any]:
    room = {"timeline": {"events": timeline, "limited": False}}
    return {"next_batch": "s1", "rooms": {"join": {ROOM: room}}}


async def run(server: FakeHomeserver, store: Store, *, page: int = 4, syncs: int = 2,
              max_gap: int = 100_000, buffer: int = 1000) -> tuple[list[str], SyncLoop]:
    loop = SyncLoop(server, store, gap_page_events=page, max_gap_events=max_gap)  # type: ignore[arg-type]
    await loop._load()
    got: list[str] = []
    async with loop.subscribe(ROOM, buffer=buffer) as recv:
        for _ in range(syncs):
            await loop.sync_once()
        while True:
            try:
                got.append(recv.receive_nowait().event_id[1:])
            except anyio.WouldBlock:
                break
    return got, loop


@pytest.fixture
async def store():
    s = Store(None)
    await s.open()
    yield s
    await s.close()


@pytest.mark.anyio
async def test_a_gap_is_walked_backwards_and_delivered_oldest_first_once(store):
    topo = [ev(f"e{i}") for i in range(30)]
    server = FakeHomeserver(topo, [first(topo[:6]), limited(topo[28:], 28)])
    got, loop = await run(server, store)
    assert got == [f"e{i}" for i in range(6, 30)]
    # Pages e27..e24, ..., e7 e6 e5 e4 (new and known), e3..e0: nothing new, stop.
    assert loop.statistics().gap_events_fetched == 28 - 0
    assert loop.statistics().gap_pages == 7


@pytest.mark.anyio
async def test_the_other_branch_interleaved_below_the_last_delivered_event_is_found(store):
    """After a heal the other server's branch sorts by depth among ours: some of
    it before the last event we delivered. All of it comes, in topological order,
    and none of ours again."""
    ours = [ev(f"a{i}") for i in range(12)]
    theirs = [ev(f"b{i}") for i in range(8)]
    fork = ours[:4]
    interleaved = [e for pair in zip(ours[4:12], theirs, strict=True) for e in pair]
    kept = [ev(f"b{i}") for i in range(8, 11)]  # what the heal delivered to /sync
    topo = fork + interleaved + kept
    server = FakeHomeserver(topo, [first(ours), limited(kept, len(topo) - 3)])
    got, _ = await run(server, store, page=3)
    assert got == [f"b{i}" for i in range(11)]


@pytest.mark.anyio
async def test_history_older_than_anything_delivered_is_not_a_gap(store):
    """The first sync seeded s0..s2; h0..h9 are older (the features load those);
    the walk stops below the oldest delivered event and delivers only the gap."""
    history = [ev(f"h{i}") for i in range(10)]
    seeded = [ev(f"s{i}") for i in range(3)]
    gap = [ev(f"g{i}") for i in range(6)]
    timeline = [ev("t0")]
    topo = history + seeded + gap + timeline
    server = FakeHomeserver(topo, [first(seeded), limited(timeline, len(topo) - 1)])
    got, _ = await run(server, store, page=4)
    assert got == [f"g{i}" for i in range(6)] + ["t0"]


@pytest.mark.anyio
async def test_state_block_events_come_in_place_or_after_the_gap(store):
    topo = [ev(f"e{i}") for i in range(10)]
    topo[5] = ev("e5", state=True)
    reset = ev("reset", state=True)  # a state change with no event in the gap
    server = FakeHomeserver(topo, [first(topo[:2]), limited(topo[8:], 8, [topo[5], reset])])
    got, _ = await run(server, store)
    assert got == ["e2", "e3", "e4", "e5", "e6", "e7", "reset", "e8", "e9"]


@pytest.mark.anyio
async def test_a_gap_beyond_the_bound_delivers_its_newest_after_the_state(store, caplog):
    topo = [ev(f"e{i}") for i in range(20)]
    # The last delivered event is not in the history the server shows (purged, or
    # a store from elsewhere): nothing known, so only the bound stops the walk.
    server = FakeHomeserver(topo, [first([ev("x")]),
                                   limited(topo[18:], 18, [ev("pl", state=True)])])
    got, loop = await run(server, store, page=3, max_gap=5)
    # Pages e17 e16 e15 | e14 e13 e12: six, past the bound of five.
    assert got == ["pl", "e12", "e13", "e14", "e15", "e16", "e17", "e18", "e19"]
    assert loop.statistics().gaps_truncated == 1
    assert "newest only" in caplog.text


@pytest.mark.anyio
async def test_a_failed_page_fails_the_batch_and_the_retry_repeats_nothing(store):
    topo = [ev(f"e{i}") for i in range(30)]
    server = FakeHomeserver(topo, [first(topo[:1]), limited(topo[28:], 28)],
                            fail_messages_at=3)
    loop = SyncLoop(server, store, gap_page_events=4)  # type: ignore[arg-type]
    await loop._load()
    async with loop.subscribe(ROOM) as recv:
        await loop.sync_once()
        with pytest.raises(TransientError):
            await loop.sync_once()
        server.syncs.append(limited(topo[28:], 28))
        await loop.sync_once()
        got = []
        while True:
            try:
                got.append(recv.receive_nowait().event_id[1:])
            except anyio.WouldBlock:
                break
    assert got == [f"e{i}" for i in range(1, 30)]


@pytest.mark.anyio
async def test_a_drain_stopped_halfway_resumes_after_a_restart_without_repeats(tmp_path):
    topo = [ev(f"e{i}") for i in range(30)]
    path = tmp_path / "s.db"
    got: list[str] = []
    store = Store(path)
    await store.open()
    server = FakeHomeserver(topo, [first(topo[:3]), limited(topo[28:], 28)])
    loop = SyncLoop(server, store, gap_page_events=4)  # type: ignore[arg-type]
    await loop._load()
    async with loop.subscribe(ROOM, buffer=0) as recv:
        await loop.sync_once()
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.sync_once)
            for _ in range(10):
                got.append((await recv.receive()).event_id[1:])
            tg.cancel_scope.cancel()
    await store.close()
    store = Store(path)
    await store.open()
    try:
        server.syncs.append(limited(topo[28:], 28))
        rest, _ = await run(server, store, syncs=1)
    finally:
        await store.close()
    assert got + rest == [f"e{i}" for i in range(3, 30)]


@pytest.mark.anyio
async def test_a_long_gap_is_spilled_to_the_store_not_held(store):
    """5,000 events in a gap, pages of 100: the sync loop's table holds them, the
    walk a page; the drain reads them back a page at a time."""
    topo = [ev(f"e{i}") for i in range(5002)]
    server = FakeHomeserver(topo, [first(topo[:1]), limited(topo[5001:], 5001)])
    got, loop = await run(server, store, page=100, buffer=10_000)
    assert got == [f"e{i}" for i in range(1, 5002)]
    left = await store.run(lambda c: c.execute("SELECT count(*) FROM sync_gap").fetchone()[0])
    assert left == 0


@pytest.mark.anyio
async def test_what_the_server_backfills_after_the_walk_is_found_by_a_recheck(store,
                                                                               monkeypatch):
    """A full local page makes Synapse backfill in the background: the first walk
    sees only our own branch there; the recheck walks again and delivers the
    other side's events that appeared meanwhile, once."""
    import mxsync.engine.gap as gap

    monkeypatch.setattr(gap, "RECHECK_DELAYS", (0.0, 0.0))
    ours = [ev(f"a{i}") for i in range(8)]
    theirs = [ev(f"b{i}") for i in range(6)]
    kept = [ev(f"b{i}") for i in range(6, 9)]
    # By depth the other side's b0..b5 interleave with ours; the server has not
    # backfilled them yet when the walk comes.
    topo = ours[:2] + [e for pair in zip(ours[2:], theirs, strict=True) for e in pair] + kept
    server = FakeHomeserver(topo, [first(ours), limited(kept, len(topo) - 3)])
    server.hidden = {e["event_id"] for e in theirs}
    got, loop = await run(server, store, page=4)
    assert got == ["b6", "b7", "b8"]  # the walk's first page: nothing new, stop
    server.hidden = set()  # backfilled in the background meanwhile
    late: list[str] = []
    async with loop.subscribe(ROOM) as recv:
        await loop.sync_once()  # the recheck runs before the /sync
        await loop.sync_once()  # the second recheck finds nothing more
        while True:
            try:
                late.append(recv.receive_nowait().event_id[1:])
            except anyio.WouldBlock:
                break
    assert late == [f"b{i}" for i in range(6)]
    assert loop.statistics().gap_rechecked == 6
    assert loop._gap.next_due() is None  # bounded: no more rechecks
