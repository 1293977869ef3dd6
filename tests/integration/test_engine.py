"""The engine against a real Synapse: login, rooms, sync (limited timelines), outbox."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import NamedTuple

import anyio
import pytest

from mxsync import Client, ForbiddenError, HomeserverUnavailable, LoginError, OutgoingEvent
from mxsync.dev import Credentials
from mxsync.engine.authz import PowerLevels, room_creators
from mxsync.engine.events import POWER_LEVELS, RoomEvent
from mxsync.engine.store import Store
from tests.integration.outage import DEAD, repoint

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

T = "org.mxsync.test"


async def collect(recv, n: int, *, deadline: float = 60.0) -> list[RoomEvent]:
    got: list[RoomEvent] = []
    with anyio.fail_after(deadline):
        async for ev in recv:
            got.append(ev)
            if len(got) >= n:
                break
    return got


async def shared_room(make_user, make_client, *, relaxed: bool = True, **kw):
    a_creds = await make_user("alice", relaxed=relaxed)
    b_creds = await make_user("bob", relaxed=relaxed)
    alice = await make_client(a_creds)
    room = await alice.create_room("test", invite=[b_creds.user_id])
    bob = await make_client(b_creds, **kw)
    await bob.join(room)
    return alice, bob, room, a_creds, b_creds


async def test_two_clients_exchange_an_event(make_user, make_client):
    alice, bob, room, *_ = await shared_room(make_user, make_client)
    async with bob.room_events(room, [T]) as recv:
        handle = await alice.send(room, T, {"n": 1})
        event_id = await handle.wait()
        (ev,) = await collect(recv, 1, deadline=30)
    assert ev.event_id == event_id
    assert ev.sender == alice.user_id
    assert ev.content == {"n": 1}
    assert bob.status.state == "synced"


async def test_limited_sync_gap_is_filled_in_order_once(make_user, make_client, tmp_path):
    """200 events while the reader is away, 10 timeline events per sync: all arrive once."""
    a_creds = await make_user("alice", relaxed=True)
    b_creds = await make_user("bob", relaxed=True)
    alice = await make_client(a_creds)
    room = await alice.create_room("gap", invite=[b_creds.user_id])
    bob_store = tmp_path / "bob.db"
    async with Client(alice.homeserver, b_creds.user_id, password=b_creds.password,
                      store_path=bob_store, timeline_limit=10) as bob:
        await bob.join(room)
        async with bob.room_events(room, [T]) as recv:
            await (await alice.send(room, T, {"i": -1})).wait()
            await collect(recv, 1)
    # Bob is gone; 200 events pile up.
    handles = await alice.send_many([OutgoingEvent(room, T, {"i": i}) for i in range(200)])
    for h in handles:
        await h.wait()
    async with Client(alice.homeserver, b_creds.user_id, password=b_creds.password,
                      store_path=bob_store, timeline_limit=10) as bob:
        async with bob.room_events(room, [T]) as recv:
            got = await collect(recv, 200, deadline=60)
            # Nothing more must come: no duplicates behind the 200.
            with anyio.move_on_after(1.5):
                extra = await recv.receive()
                order = [e.content["i"] for e in got]
                pytest.fail(f"unexpected extra event {extra.content} after {order}")
        assert bob.sync.gap_fills >= 1
    assert [ev.content["i"] for ev in got] == list(range(200))
    assert len({ev.event_id for ev in got}) == 200


async def test_live_limited_syncs_lose_nothing(make_user, make_client):
    """The reader stays online while bursts larger than its timeline limit arrive."""
    alice, bob, room, *_ = await shared_room(make_user, make_client, timeline_limit=3)
    async with bob.room_events(room, [T]) as recv:
        handles = await alice.send_many([OutgoingEvent(room, T, {"i": i}) for i in range(120)])
        got = await collect(recv, 120, deadline=90)
    for h in handles:
        await h.wait()
    assert [ev.content["i"] for ev in got] == list(range(120))


def label(ev: RoomEvent) -> str:
    if ev.type == POWER_LEVELS:
        return "levels"
    return f"{ev.content.get('who', '')}{ev.content['i']}"


async def assert_nothing_more(recv, got: list[RoomEvent], wait: float = 1.5) -> None:
    with anyio.move_on_after(wait):
        extra = await recv.receive()
        pytest.fail(f"unexpected extra event {label(extra)} after {[label(e) for e in got]}")


class Away(NamedTuple):
    alice: Client
    room: str
    bob: Credentials
    store: Path
    #: Power levels in force where Bob stopped reading.
    levels: dict | None

    def back(self) -> Client:
        """Bob again, on his store. His first run left a long-poll behind, which
        the next event ends and Synapse caches for two minutes for a repeat of
        the same request: another long-poll timeout makes this one a new request,
        so that its first sync is the limited one whatever the timing."""
        return Client(self.alice.homeserver, self.bob.user_id, password=self.bob.password,
                      store_path=self.store, timeline_limit=3, sync_timeout_ms=25_000)


async def reader_away(make_user, make_client, tmp_path, *, writers=None) -> Away:
    """Alice's room with Bob in it; Bob (store on disk, 3 timeline events per sync)
    has delivered one event and is gone."""
    a_creds = await make_user("alice", relaxed=True)
    b_creds = await make_user("bob", relaxed=True)
    alice = await make_client(a_creds)
    invite = [b_creds.user_id, *(writers or [])]
    room = await alice.create_room("away", invite=invite, writers=writers)
    store = tmp_path / "bob.db"
    async with Client(alice.homeserver, b_creds.user_id, password=b_creds.password,
                      store_path=store, timeline_limit=3) as bob:
        await bob.join(room)
        async with bob.room_events(room, [T]) as recv:
            await (await alice.send(room, T, {"who": "alice", "i": -1})).wait()
            await collect(recv, 1)
        levels = await bob.get_state(room, POWER_LEVELS)
    return Away(alice, room, b_creds, store, levels)


async def send_in_order(client: Client, room: str, who: str, indices) -> None:
    handles = await client.send_many(
        [OutgoingEvent(room, T, {"who": who, "i": i}) for i in indices]
    )
    for h in handles:
        await h.wait()


async def test_power_levels_changed_in_a_limited_sync_gap_arrive_in_their_place(
    make_user, make_client, tmp_path
):
    """Carol writes, is demoted, Alice writes, all while Bob is away; Bob's next sync
    is limited and its state block already holds the demotion. Bob must see it
    between Carol's events and Alice's, or Carol's events would be judged by it."""
    c_creds = await make_user("carol", relaxed=True)
    away = await reader_away(make_user, make_client, tmp_path, writers=[c_creds.user_id])
    alice, room = away.alice, away.room
    carol = await make_client(c_creds)
    await carol.join(room)
    await send_in_order(carol, room, "carol", range(4))
    demoted = dict(await alice.get_state(room, POWER_LEVELS) or {})
    demoted["users"] = {**demoted.get("users", {}), c_creds.user_id: 0}
    demotion = await (await alice.send(room, POWER_LEVELS, demoted, state_key="")).wait()
    await send_in_order(alice, room, "alice", range(4))

    async with away.back() as bob:
        async with bob.room_events(room, [T, POWER_LEVELS]) as recv:
            got = await collect(recv, 9)
            await assert_nothing_more(recv, got)
        creators = room_creators(await bob.state_event(room, "m.room.create"))
        assert bob.sync.gap_fills == 1
        assert bob.sync.state[room][(POWER_LEVELS, "")].event_id == demotion
    assert [label(ev) for ev in got] == [
        "carol0", "carol1", "carol2", "carol3", "levels", "alice0", "alice1", "alice2", "alice3"
    ]
    assert got[4].event_id == demotion
    # A reader following the levels through the timeline (PROTOCOL.md 1.3) keeps
    # every event: Carol wrote hers while she could.
    levels = PowerLevels(away.levels, creators)
    for ev in got:
        assert levels.allows(ev), label(ev)
        levels = levels.after(ev)
    assert not levels.allows(got[0])  # and she can no longer


async def test_a_gap_behind_an_unknown_position_is_bounded_older_state_first(
    make_user, make_client, tmp_path, caplog
):
    """The last delivered event is not in the room's history (a store from
    elsewhere): the gap walk finds nothing it delivered, stops at
    ``max_gap_events`` and delivers the newest of the gap; the state that
    changed before where it stopped comes before it."""
    away = await reader_away(make_user, make_client, tmp_path)
    alice, room = away.alice, away.room
    await send_in_order(alice, room, "a", [0])
    raised = dict(await alice.get_state(room, POWER_LEVELS) or {})
    raised["users"] = {**raised.get("users", {}), away.bob.user_id: 10}
    change = await (await alice.send(room, POWER_LEVELS, raised, state_key="")).wait()
    await send_in_order(alice, room, "a", range(1, 10))
    db = Store(away.store)
    await db.open()
    try:
        await db.kv_set("sync.last", room, b"$not-an-event-of-this-room")
    finally:
        await db.close()

    bob = away.back()
    bob.sync.max_gap_events = 4
    bob.sync.gap_page_events = 2
    async with bob, bob.room_events(room, [T, POWER_LEVELS]) as recv:
        got = await collect(recv, 8)
        await assert_nothing_more(recv, got)
    # Timeline a7..a9; the search passed a6 a5 | a4 a3 and stopped at 4 events.
    assert [label(ev) for ev in got] == ["levels", "a3", "a4", "a5", "a6", "a7", "a8", "a9"]
    assert got[0].event_id == change
    assert "newest only" in caplog.text


async def test_a_reader_stopped_in_the_middle_of_a_gap_fill_resumes_it_once(
    make_user, make_client, tmp_path
):
    """Stopped while a consumer has taken 10 of a 27-event gap: the next start goes
    on with the 11th, and nothing comes twice."""
    away = await reader_away(make_user, make_client, tmp_path)
    room = away.room
    await send_in_order(away.alice, room, "a", range(30))

    def reader() -> Client:
        bob = away.back()
        bob.sync.gap_page_events = 4
        return bob

    bob = reader()
    with anyio.CancelScope() as stop:
        # buffer=0: an event counts as delivered once the consumer has taken it.
        async with bob, bob.room_events(room, [T], buffer=0) as recv:
            first = await collect(recv, 10)
            assert bob.sync.status.since is not None
            stop.cancel()
            await anyio.sleep(30)
    assert stop.cancelled_caught
    bob = reader()
    async with bob, bob.room_events(room, [T], buffer=0) as recv:
        rest = await collect(recv, 20)
        await assert_nothing_more(recv, rest)
    assert [ev.content["i"] for ev in first + rest] == list(range(30))


async def test_gap_fill_memory_is_bounded_by_a_page_not_by_the_gap(
    make_user, make_client, tmp_path
):
    """1,200 events of 4 KB (4.8 MB of content) in a gap: the fill spills them to
    the store and holds one page of 50 at a time."""
    n, pad = 1200, "x" * 4000
    away = await reader_away(make_user, make_client, tmp_path)
    room = away.room
    handles = await away.alice.send_many(
        [OutgoingEvent(room, T, {"i": i, "pad": pad}) for i in range(n)]
    )
    for h in handles:
        await h.wait()
    bob = away.back()
    bob.sync.gap_page_events = 50
    order: list[int] = []
    tracemalloc.start()
    try:
        async with bob, bob.room_events(room, [T]) as recv:
            with anyio.fail_after(120):
                async for ev in recv:
                    order.append(ev.content["i"])  # keep no event: measure the loop
                    if len(order) >= n:
                        break
            await assert_nothing_more(recv, [])
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert order == list(range(n))
    assert bob.sync.gap_fills == 1
    print(f"tracemalloc peak during a gap fill of {n} x 4 KB: {peak / 1e6:.2f} MB")
    # Holding the gap takes more than its 4.8 MB of content; a page is 0.2 MB.
    assert peak < n * len(pad) / 2


async def test_wrong_password_is_a_clear_login_error(hs, make_user):
    creds = await make_user("eve")
    client = Client(hs.url, creds.user_id, password="not-the-password")
    with pytest.raises(LoginError) as info:
        async with client:
            pass
    msg = str(info.value)
    assert creds.user_id in msg and hs.url in msg
    assert "not-the-password" not in msg


async def test_unreachable_homeserver_fails_after_bounded_retries():
    # Port 9 on loopback: nothing listens there.
    client = Client("http://127.0.0.1:9", "@x:localhost", password="pw", call_attempts=3)
    with anyio.fail_after(30), pytest.raises(HomeserverUnavailable) as info:
        async with client:
            pass
    assert "127.0.0.1:9" in str(info.value)
    assert client.http.requests == 3


async def test_reader_without_power_level_is_refused(make_user, make_client):
    a_creds = await make_user("alice", relaxed=True)
    r_creds = await make_user("reader", relaxed=True)
    alice = await make_client(a_creds)
    room = await alice.create_room("ro", invite=[r_creds.user_id], writers=[])
    reader = await make_client(r_creds)
    await reader.join(room)
    assert not await reader.may_send(room, reader.user_id, T)
    assert await reader.may_send(room, alice.user_id, "org.mxsync.readings")
    handle = await reader.send(room, "org.mxsync.readings", {"x": 1})
    with anyio.fail_after(30), pytest.raises(ForbiddenError):
        await handle.wait()
    assert reader.outbox.pending == 0


async def test_store_file_is_private(make_user, make_client, tmp_path):
    creds = await make_user("p")
    path = tmp_path / "private.db"
    await make_client(creds, store=path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    assert creds.password.encode() not in path.read_bytes()


async def test_session_and_device_survive_restart(hs, make_user, tmp_path):
    creds = await make_user("s")
    path = tmp_path / "s.db"
    async with Client(hs.url, creds.user_id, password=creds.password, store_path=path) as c:
        first = c.device_id
    async with Client(hs.url, creds.user_id, password=creds.password, store_path=path) as c:
        assert c.device_id == first
        assert c.status.state in ("connecting", "synced")


SENDER = textwrap.dedent(
    """
    import sys, anyio
    from mxsync import Client, OutgoingEvent

    async def main(url, user, password, store, room, n):
        async with Client(url, user, password=password, store_path=store) as c:
            await c.send_many([OutgoingEvent(room, "org.mxsync.test", {"i": i})
                               for i in range(n)])
            print("ENQUEUED", flush=True)
            await anyio.sleep(3600)

    anyio.run(main, *sys.argv[1:6], int(sys.argv[6]))
    """
)


async def test_kill_9_with_a_full_outbox_then_restart_delivers_each_event_once(
    hs, make_user, make_client, tmp_path
):
    """Default rate limits keep most of 60 events in the outbox when the sender dies."""
    n = 60
    a_creds = await make_user("killed")  # default rate limits: 0.2/s, burst 10
    b_creds = await make_user("watcher", relaxed=True)
    watcher = await make_client(b_creds)
    room = await watcher.create_room("kill", invite=[a_creds.user_id],
                                     writers=[a_creds.user_id])
    store = tmp_path / "killed.db"
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), hs.url, a_creds.user_id, a_creds.password, str(store),
         room, str(n)],
        stdout=subprocess.PIPE,
    )
    try:
        async with Client(hs.url, a_creds.user_id, password=a_creds.password) as joiner:
            await joiner.join(room)

        def wait_line() -> bytes:
            assert proc.stdout is not None
            return proc.stdout.readline()

        with anyio.fail_after(60):
            line = await anyio.to_thread.run_sync(wait_line)
        assert line.strip() == b"ENQUEUED"
        await anyio.sleep(2.0)  # let it send its burst and hit the rate limit
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(timeout=10)
    await hs.override_ratelimit(a_creds.user_id)
    async with Client(hs.url, a_creds.user_id, password=a_creds.password,
                      store_path=store) as again:
        with anyio.fail_after(120):
            await again.outbox.flush()
        assert again.outbox.pending == 0
    # The server's own history is the truth: each index exactly once.
    seen: list[int] = []
    token = None
    with anyio.fail_after(60):
        while True:
            page = await watcher.messages(room, token, direction="f", types=[T])
            seen.extend(ev.content["i"] for ev in page.events)
            if not page.events or page.end is None:
                break
            token = page.end
    assert sorted(seen) == list(range(n)), seen
    assert seen == list(range(n))  # one lane: order kept too


async def test_default_rate_limits_twenty_events_all_arrive(make_user, make_client):
    """Synapse's default limits (0.2/s, burst 10): the outbox waits out every 429.
    Twenty events: ten past the burst prove it (each costs 5 s of the test)."""
    a_creds = await make_user("limited")  # not relaxed
    b_creds = await make_user("reader2", relaxed=True)
    alice = await make_client(a_creds)
    room = await alice.create_room("limits", invite=[b_creds.user_id])
    bob = await make_client(b_creds)
    await bob.join(room)
    async with bob.room_events(room, [T]) as recv:
        handles = await alice.send_many([OutgoingEvent(room, T, {"i": i}) for i in range(20)])
        got = await collect(recv, 20, deadline=200)
    for h in handles:
        await h.wait()
    assert [ev.content["i"] for ev in got] == list(range(20))
    assert alice.outbox.rate_limited > 0  # the limit was really hit and honoured


async def test_outbox_survives_restart_without_server(hs, make_user, tmp_path):
    """Enqueued while the server is unreachable, sent once it is reachable again."""
    creds = await make_user("offline", relaxed=True)
    store = tmp_path / "off.db"
    async with Client(hs.url, creds.user_id, password=creds.password, store_path=store) as c:
        room = await c.create_room("off")
    # Simulate an outage with a store whose session points at a dead port: the
    # outbox must keep the events and not spin.
    assert Path(store).exists()
    async with Client(hs.url, creds.user_id, password=creds.password, store_path=store) as c:
        await repoint(c, DEAD)
        handles = await c.send_many([OutgoingEvent(room, T, {"i": i}) for i in range(5)])
        await anyio.sleep(3)
        assert not any(h.done for h in handles)
        assert c.outbox.pending == 5
        assert c.http.requests < 60  # backoff, not a spin
    async with Client(hs.url, creds.user_id, password=creds.password, store_path=store) as c:
        with anyio.fail_after(60):
            await c.outbox.flush()
        page = await c.messages(room, types=[T])
        assert sorted(ev.content["i"] for ev in page.events) == list(range(5))


async def test_own_echo_carries_the_txn_id_other_devices_do_not(hs, make_user, make_client):
    creds = await make_user("echo", relaxed=True)
    one = await make_client(creds)
    two = await make_client(creds)  # same user, another device
    room = await one.create_room("echo")
    async with one.room_events(room, [T]) as r1, two.room_events(room, [T]) as r2:
        handle = await one.send(room, T, {"x": 1})
        (mine,) = await collect(r1, 1)
        (theirs,) = await collect(r2, 1)
    assert mine.txn_id == handle.txn_id
    assert theirs.txn_id is None
    assert one.device_id != two.device_id


async def test_first_sync_of_a_new_store_is_not_delivered_as_live(make_user, make_client, hs):
    """Recent history in a brand-new client's first sync is not news."""
    a_creds = await make_user("alice", relaxed=True)
    b_creds = await make_user("bob", relaxed=True)
    alice = await make_client(a_creds)
    room = await alice.create_room("old", invite=[b_creds.user_id])
    async with Client(hs.url, b_creds.user_id, password=b_creds.password) as joiner:
        await joiner.join(room)
    await (await alice.send(room, T, {"old": True})).wait()
    bob = Client(hs.url, b_creds.user_id, password=b_creds.password)
    async with bob, bob.room_events(room, [T]) as recv:
        with anyio.fail_after(30):
            await bob.wait_synced()
        await (await alice.send(room, T, {"new": True})).wait()
        (ev,) = await collect(recv, 1)
        assert ev.content == {"new": True}
        assert bob.sync.state[room][("m.room.create", "")].sender == alice.user_id
