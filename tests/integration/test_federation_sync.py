"""Nothing lost across federating homeservers: a partition, concurrent edits on
both sides, a device publishing to a dashboard across the cut, a heal.

Against two real Synapses (the second on PostgreSQL) behind TCP proxies that
cut and heal the link (the ``federation`` fixture). Each side makes more than
150 update events: more than Synapse's catch-up keeps (~100), so after the heal
each server answers a ``limited`` sync and only paging /messages backwards (the
gap repair) makes it backfill the rest. Checked: every replica, and a fresh late
joiner on each side, ends with identical documents; the subscriber has every
reading exactly once and in order.

Variants: with the admin backoff reset after the heal and without it (then
Synapse's own retry, woken by fresh traffic, as in real rooms); with snapshots
disabled (nothing can hide a lost update); with a client offline during the heal.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pycrdt
import pytest
from anyio.abc import TaskStatus

# The device of the single-server last-will test (offline_after=3 s), run on one
# side of a cut. (tests/integration is on sys.path: pytest's prepend import mode.)
from test_streams import DEVICE_SCRIPT, start_device

from mxsync import Client
from mxsync.dev import Credentials, Federation

pytestmark = pytest.mark.anyio

EDITS = 160  # per side, one update event each: more than Synapse's catch-up keeps
BATCHES = 160
HEAL_DEADLINE = 150.0


def content(sdoc: Any) -> tuple[str, dict[str, Any]]:
    doc: pycrdt.Doc[Any] = sdoc.doc
    return str(doc.get("t", type=pycrdt.Text)), dict(doc.get("m", type=pycrdt.Map).to_py())


async def edit_side(sdoc: Any, side: str, n: int) -> None:
    """``n`` edits, each its own update event: text, conflicting keys, set vs delete."""
    doc = sdoc.doc
    text = doc.get("t", type=pycrdt.Text)
    m = doc.get("m", type=pycrdt.Map)
    for i in range(n):
        if i % 4 == 0:
            text.insert(0 if side == "a" else len(str(text)), f"{side}{i} ")
        elif i % 4 == 1:
            m[f"k{i % 7}"] = f"{side}{i}"  # both sides set the same keys
        elif i % 4 == 2:
            if side == "a":
                m[f"s{i % 5}"] = i  # set on one side ...
            else:
                m.pop(f"s{i % 5}", None)  # ... deleted on the other
        else:
            m[f"u-{side}{i}"] = i  # one key per edit: proves each arrived
        await sdoc.flush()


@pytest.fixture
async def start_client(tmp_path) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """``await start_client(creds, **kw)``: a client stopped when the test ends
    (hosted in a task of the fixture, entered and exited there, as anyio wants)."""

    async def host(client: Client, *, task_status: TaskStatus[Client]) -> None:
        async with client:
            task_status.started(client)
            await anyio.sleep_forever()

    counter = 0
    async with anyio.create_task_group() as tg:

        async def start(creds: Credentials, **kw: Any) -> Client:
            nonlocal counter
            counter += 1
            kw.setdefault("store_path", tmp_path / f"c{counter}.db")
            client = Client(creds.homeserver, creds.user_id, password=creds.password, **kw)
            started: Client = await tg.start(host, client)
            return started

        yield start
        tg.cancel_scope.cancel()


class Hosted:
    """A client and its document in a task of their own, stoppable at any time."""

    def __init__(self, creds: Credentials, store: Any, room: str, **doc_kw: Any) -> None:
        self.creds, self.store, self.room, self.doc_kw = creds, store, room, doc_kw
        self.scope = anyio.CancelScope()
        self.stopped = anyio.Event()

    async def run(self, *, task_status: TaskStatus[tuple[Client, Any]]) -> None:
        try:
            with self.scope:
                c = self.creds
                async with Client(c.homeserver, c.user_id, password=c.password,
                                  store_path=self.store) as client:
                    with anyio.fail_after(120):
                        await client.join(self.room, via=self.doc_kw.pop("via", []))
                    async with client.open_doc(self.room, "d", **self.doc_kw) as sdoc:
                        task_status.started((client, sdoc))
                        await anyio.sleep_forever()
        finally:
            self.stopped.set()

    async def stop(self) -> None:
        self.scope.cancel()
        with anyio.fail_after(60):
            await self.stopped.wait()


async def until(check: Callable[[], Awaitable[bool] | bool], deadline: float,
                nudge: Callable[[], Awaitable[None]] | None = None,
                nudge_every: float = 5.0) -> float:
    """Seconds until ``check()`` holds; ``nudge`` makes fresh traffic meanwhile."""
    start = last = time.monotonic()
    with anyio.fail_after(deadline):
        while True:
            ok = check()
            if not isinstance(ok, bool):
                ok = await ok
            if ok:
                return time.monotonic() - start
            if nudge is not None and time.monotonic() - last > nudge_every:
                await nudge()
                last = time.monotonic()
            await anyio.sleep(0.25)


async def edit_apart(da: Any, db: Any, pub: Any) -> None:
    """Both sides edit, the device publishes one batch per reading: all at once."""
    async def publish() -> None:
        for i in range(BATCHES):
            pub.publish("x", i)
            await pub.flush()  # one batch each

    with anyio.fail_after(240):
        async with anyio.create_task_group() as tg:
            tg.start_soon(edit_side, da, "a", EDITS)
            tg.start_soon(edit_side, db, "b", EDITS)
            tg.start_soon(publish)
    assert content(da) != content(db)


async def wait_converged(da: Any, db: Any, *, nudge: bool) -> float:
    """Seconds until both replicas agree with nothing pending; ``nudge``: one
    fresh edit per side every 5 s meanwhile (Synapse's own retry wakes on it)."""
    nudges = 0

    async def one_more() -> None:
        nonlocal nudges
        nudges += 1
        da.doc.get("m", type=pycrdt.Map)[f"nudge-a{nudges}"] = nudges
        db.doc.get("m", type=pycrdt.Map)[f"nudge-b{nudges}"] = nudges

    def converged() -> bool:
        sa, sb = da.statistics(), db.statistics()
        return (content(da) == content(db) and sa.pending_updates == 0
                and sb.pending_updates == 0 and sa.pending_edits == 0
                and sb.pending_edits == 0)

    took = await until(converged, HEAL_DEADLINE, one_more if nudge else None)
    text, m = content(da)
    for side in "ab":
        assert all(f"{side}{i} " in text for i in range(0, EDITS, 4)), side
        assert all(f"u-{side}{i}" in m for i in range(3, EDITS, 4)), side
    return took


async def check_readings(sub: Any, variant: str) -> None:
    """Every reading the device published across the cut, once, in order."""
    readings = []
    with anyio.fail_after(HEAL_DEADLINE):
        async for r in sub:
            readings.append(r.value)
            if len(readings) >= BATCHES:
                break
    assert readings == list(range(BATCHES))
    stats = sub.statistics()
    print(f"{variant}: subscriber {stats}")
    # A batch the subscriber found by looking back (after a jump) may come
    # again through the sync loop's later gap fill: skipped, never delivered.
    assert stats.missing_batches == 0 and stats.gaps == 0
    assert stats.duplicates <= stats.repaired_batches


async def check_late_joiners(start_client: Any, room: str, joiners: list[Credentials],
                             via: str, final: tuple[str, dict[str, Any]]) -> None:
    """A fresh client on each side joins (through ``via``), opens, and agrees."""
    for creds in joiners:
        late = await start_client(creds, store_path=None)
        with anyio.fail_after(120):
            await late.join(room, via=[via])
        async with late.open_doc(room, "d", read_only=True) as sdoc:
            with anyio.fail_after(120):
                await sdoc.wait_synced()
            await until(lambda s=sdoc: content(s) == final, 60)
            assert sdoc.statistics().pending_updates == 0


@pytest.mark.parametrize("variant", ["reset", "no-reset", "no-snapshots", "offline"])
async def test_a_partition_heals_with_nothing_lost(federation: Federation, fed_user,
                                                   start_client, tmp_path, variant):
    reset = variant in ("reset", "no-snapshots")
    snapshots = variant != "no-snapshots"
    names = federation.server_names
    a_creds = await fed_user(0, "alice", relaxed=True)
    dev_creds = await fed_user(0, "dev", relaxed=True)
    late_a = await fed_user(0, "latea")
    b_creds = await fed_user(1, "bob", relaxed=True)
    dash_creds = await fed_user(1, "dash")
    late_b = await fed_user(1, "lateb")
    alice = await start_client(a_creds)
    room = await alice.create_room(
        "split", invite=[b_creds.user_id, dev_creds.user_id, dash_creds.user_id,
                         late_a.user_id, late_b.user_id],
        writers=[b_creds.user_id, dev_creds.user_id])
    bob_store = tmp_path / "bob.db"
    dev = await start_client(dev_creds)
    dash = await start_client(dash_creds)
    with anyio.fail_after(120):
        await dev.join(room)
        await dash.join(room, via=[names[0]])

    async with anyio.create_task_group() as hosts, AsyncExitStack() as docs:
        bob_host = Hosted(b_creds, bob_store, room, snapshots=snapshots, via=[names[0]])
        with anyio.fail_after(120):
            bob, db = await hosts.start(bob_host.run)
        da = await docs.enter_async_context(alice.open_doc(room, "d", snapshots=snapshots))
        sub = await docs.enter_async_context(dash.subscribe(room))
        pub = await docs.enter_async_context(dev.publisher(room, device="probe",
                                                           presence=False))
        with anyio.fail_after(120):
            await da.wait_synced()
            await db.wait_synced()
        da.doc.get("t", type=pycrdt.Text).insert(0, "base ")
        await da.flush()
        await until(lambda: content(db) == content(da), 60)

        federation.cut("drop")
        try:
            await edit_apart(da, db, pub)
            if variant == "offline":
                await bob_host.stop()  # Bob stops: he misses the heal
        finally:
            heal_started = time.monotonic()
            await federation.heal_link(reset=reset)

        if variant == "offline":
            # Back after the servers have exchanged what they could: his first
            # sync is limited, his document catches up from its cache.
            await anyio.sleep(10)
            bob_host = Hosted(b_creds, bob_store, room, snapshots=snapshots)
            with anyio.fail_after(120):
                bob, db = await hosts.start(bob_host.run)
            with anyio.fail_after(120):
                await db.wait_synced()
        took = await wait_converged(da, db, nudge=not reset)
        print(f"{variant}: converged {time.monotonic() - heal_started:.1f} s after the heal "
              f"({took:.1f} s of waiting), gaps filled: alice {alice.sync.gap_fills}, "
              f"bob {bob.sync.gap_fills}, events fetched: "
              f"{alice.sync.gap_events_fetched + bob.sync.gap_events_fetched}; "
              f"looked back: alice repaired {da.statistics().repaired}, "
              f"bob repaired {db.statistics().repaired}")
        await check_readings(sub, variant)
        await check_late_joiners(start_client, room, [late_a, late_b], names[0], content(da))
        hosts.cancel_scope.cancel()


async def test_a_device_that_dies_while_partitioned_is_offline_on_both_sides(
    federation: Federation, fed_user, start_client, tmp_path
):
    """Killed (SIGKILL) on one side of a cut: its homeserver's last will marks it
    offline there; after the heal the other side has the same device state."""
    dev_creds = await fed_user(0, "will", relaxed=True)
    near_creds = await fed_user(0, "near")
    far_creds = await fed_user(1, "far")
    owner = await start_client(dev_creds)
    room = await owner.create_room("wills", invite=[near_creds.user_id, far_creds.user_id],
                                   writers=[dev_creds.user_id])
    near = await start_client(near_creds)
    far = await start_client(far_creds)
    with anyio.fail_after(120):
        await near.join(room)
        await far.join(room, via=[federation.server_names[0]])
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    async with near.subscribe(room) as sub_near, far.subscribe(room) as sub_far:
        proc = await start_device(script, dev_creds.homeserver, dev_creds,
                                  tmp_path / "device.db", room)
        try:
            with anyio.fail_after(60):
                await sub_near.wait_device("sensor-9", online=True)
                await sub_far.wait_device("sensor-9", online=True)
            federation.cut("drop")
        finally:
            proc.kill()  # no shutdown state: only the homeserver's last will
            proc.wait(timeout=10)
        try:
            with anyio.fail_after(3.0 + 30.0):
                st = await sub_near.wait_device("sensor-9", online=False)
            assert st.reason == "last-will" and not st.inferred
        finally:
            await federation.heal_link(reset=True)

        def told() -> bool:
            st = sub_far.devices.get("sensor-9")
            return st is not None and not st.online and st.reason == "last-will"

        await until(told, 90)
        far_st, near_st = sub_far.devices["sensor-9"], sub_near.devices["sensor-9"]
        assert (far_st.session, far_st.sender) == (near_st.session, near_st.sender)
