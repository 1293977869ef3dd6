"""Faults against a real Synapse: kill -9 in the middle of heavy writing, and an outage.

What the contract promises, and what these tests hold it to:

- A document edit is *made* once the writer has stored it (``await
  sdoc.persist()`` returns; without it, at most ``batch_delay`` = 50 ms plus one
  SQLite commit after the edit). A kill -9 keeps every made edit, and since the
  store is written in order, what survives is exactly a *prefix* of the edit
  sequence: the edits of the last <= 50 ms that were only in memory may be lost,
  nothing else, and nothing out of order.
- A reading is made once it is in the store (``await pub.persist()``; without it
  at most ``save_interval`` = 100 ms after ``publish``). A kill -9 keeps every
  made reading; the homeserver then stores each of them exactly once (the
  outbox's transaction ids), in publication order, in batches whose ``seq``
  numbers are consecutive. Readings of the last <= 100 ms may be lost, and what
  survives is again a prefix.
- An outage of the homeserver loses nothing and the clients do not spin.

The writers run in a child process (``sys.executable`` on a script in
``tmp_path``) that prints a line at each durability checkpoint; the test kills
it with SIGKILL right after such a line while it keeps writing, and restarts the
writer in-process with the same store.
"""

from __future__ import annotations

import random
import socket
import string
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pycrdt
import pytest

from mxsync import Client
from mxsync.dev import DevServer
from mxsync.errors import RateLimitedError
from mxsync.protocol import api
from mxsync.protocol.docs import decode_state_vector
from mxsync.protocol.readings import decode_batch
from mxsync.protocol.types import READINGS

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


# ---------------------------------------------------------------------- helpers


async def until(cond: Callable[[], bool], *, deadline: float = 60.0) -> None:
    with anyio.fail_after(deadline):
        while not cond():  # noqa: ASYNC110 - a predicate over several objects, polled
            await anyio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def doc_values(doc: pycrdt.Doc) -> dict[str, Any]:
    return {
        "t": str(doc.get("t", type=pycrdt.Text)),
        "a": doc.get("a", type=pycrdt.Array).to_py(),
        "m": doc.get("m", type=pycrdt.Map).to_py(),
    }


def decoded(doc: pycrdt.Doc) -> dict[str, Any]:
    """What ``doc.get_update()`` holds, read back through a fresh document."""
    fresh: pycrdt.Doc = pycrdt.Doc()
    fresh.apply_update(doc.get_update())
    return doc_values(fresh)


class Child:
    """A writer process; ``lines()`` yields its stdout lines as they come."""

    def __init__(self, script: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(script), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    async def line(self, deadline: float = 60.0) -> str:
        assert self.proc.stdout is not None
        with anyio.fail_after(deadline):
            raw = await anyio.to_thread.run_sync(self.proc.stdout.readline)
        if not raw:
            raise AssertionError(f"the child exited ({self.proc.poll()}) without a word")
        return raw.decode().strip()

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no cleanup runs, no buffer is saved on the way out
        self.proc.wait(timeout=10)


# ------------------------------------------------------------- a killed editor

#: The edit sequence. Edit i is one transaction: a random character inserted in
#: the text at a random place (every 7th edit deletes one instead), an element
#: inserted in the array at a random place (every 11th removes one), and m["n"]
#: set to i + 1, so that a document tells how many edits of the sequence it holds.
#: The same function runs in the child and in the test, which replays the first
#: m["n"] edits on a plain pycrdt.Doc to know exactly what the document must hold.
EDITS = textwrap.dedent(
    """
    import random, string
    import pycrdt

    def edit(doc, i, rng):
        t = doc.get("t", type=pycrdt.Text)
        a = doc.get("a", type=pycrdt.Array)
        m = doc.get("m", type=pycrdt.Map)
        with doc.transaction():
            if i % 7 == 6 and len(t):
                at = rng.randrange(len(t))
                del t[at:at + 1]
            else:
                t.insert(rng.randint(0, len(t)), rng.choice(string.ascii_letters))
            if i % 11 == 10 and len(a):
                del a[rng.randrange(len(a))]
            else:
                a.insert(rng.randint(0, len(a)), i)
            m["n"] = i + 1
            m[f"k{i % 13}"] = i
    """
)

EDITOR = EDITS + textwrap.dedent(
    """
    import sys, anyio
    from mxsync import Client

    async def main(url, user, password, store, room, n, every):
        rng = random.Random(1234)
        async with Client(url, user, password=password, store_path=store) as c:
            async with c.open_doc(room, "crash") as sdoc:
                await sdoc.wait_synced()
                print("READY", flush=True)
                for i in range(n):
                    edit(sdoc.doc, i, rng)
                    if (i + 1) % every == 0:
                        await sdoc.persist()  # a durability checkpoint
                        print("PERSISTED", i + 1, sdoc.statistics().update_events_sent,
                              flush=True)
                    # Online and continuous: the writer batches while edits go on.
                    await anyio.sleep(0.0002 if i % 10 == 0 else 0)
                await sdoc.flush()
                print("DONE", flush=True)
                await anyio.sleep(3600)

    anyio.run(main, *sys.argv[1:6], int(sys.argv[6]), int(sys.argv[7]))
    """
)


def replay(n: int) -> dict[str, Any]:
    """The values after the first ``n`` edits of the sequence."""
    scope: dict[str, Any] = {}
    exec(EDITS, scope)  # the very code the child ran
    doc: pycrdt.Doc = pycrdt.Doc()
    rng = random.Random(1234)
    for i in range(n):
        scope["edit"](doc, i, rng)
    return doc_values(doc)


async def test_kill_9_in_the_middle_of_10000_edits_keeps_every_persisted_edit(
    hs, make_user, make_client, tmp_path
):
    n, every, kill_after = 10_000, 500, 5_000
    owner_c = await make_user("owner", relaxed=True)
    editor_c = await make_user("editor", relaxed=True)
    reader_c = await make_user("reader", relaxed=True)
    owner = await make_client(owner_c)
    room = await owner.create_room("crash", invite=[editor_c.user_id, reader_c.user_id],
                                   writers=[editor_c.user_id])
    async with Client(hs.url, editor_c.user_id, password=editor_c.password) as joiner:
        await joiner.join(room)
    script = tmp_path / "editor.py"
    script.write_text(EDITOR)
    store = tmp_path / "editor.db"
    child = Child(script, hs.url, editor_c.user_id, editor_c.password, str(store), room,
                  str(n), str(every))
    checkpoints: list[tuple[int, int]] = []
    try:
        assert await child.line() == "READY"
        while not checkpoints or checkpoints[-1][0] < kill_after:
            word, edits, sent = (await child.line(deadline=120)).split()
            assert word == "PERSISTED", word
            checkpoints.append((int(edits), int(sent)))
        # It goes on editing and batching: kill it somewhere past the checkpoint.
        await anyio.sleep(0.3)
    finally:
        child.kill()
    persisted, sent_before = checkpoints[-1]
    assert sent_before > 0  # it was online: batches had gone out before the kill

    # Restarted in-process with the same store: the cache and the doc log come back,
    # unsent edits go out.
    async with (
        Client(hs.url, editor_c.user_id, password=editor_c.password,
               store_path=store) as again,
        again.open_doc(room, "crash") as sdoc,
    ):
        with anyio.fail_after(60):
            await sdoc.wait_synced()
            await sdoc.flush()
        survived = sdoc.doc.get("m", type=pycrdt.Map).to_py()["n"]
        restarted = doc_values(sdoc.doc)
        restarted_sv = decode_state_vector(sdoc.doc.get_state())
    # Every edit persisted before the kill survived; what survived is exactly the
    # first `survived` edits of the sequence (a prefix: nothing reordered, nothing
    # half-applied). The edits made after the last checkpoint were at risk only for
    # the 50 ms they spend in memory.
    assert persisted <= survived < n, (persisted, survived)
    assert restarted == replay(int(survived))

    # An independent reader that never saw any of it opens the document cold.
    reader = await make_client(reader_c)
    await reader.join(room)
    async with reader.open_doc(room, "crash", read_only=True) as fresh:
        with anyio.fail_after(60):
            await fresh.wait_synced()
        await until(lambda: doc_values(fresh.doc) == restarted)
        assert decoded(fresh.doc) == restarted
        assert decode_state_vector(fresh.doc.get_state()) == restarted_sv
        assert fresh.statistics().skipped == 0


# ------------------------------------------------------------- a killed device

PUBLISHER = textwrap.dedent(
    """
    import random, sys, anyio
    from mxsync import Client

    T0 = 1_700_000_000_000

    rng = random.Random(7)
    VALUES = [rng.randrange(2**20) for _ in range(50_000)]  # noise: ~1,000 a batch

    async def main(url, user, password, store, room, n, every):
        async with Client(url, user, password=password, store_path=store) as c:
            # Small batches (4 KiB) so that many are sealed, in flight and sent.
            async with c.publisher(room, device="logger", presence=False,
                                   max_bytes=4096) as pub:
                print("READY", flush=True)
                for i in range(n):
                    # Reading i: sensor s<i % 5>, time T0 + i ms, VALUES[i].
                    pub.publish(f"s{i % 5}", VALUES[i], t=T0 + i)
                    if (i + 1) % every == 0:
                        await pub.persist()  # a durability checkpoint
                        st = pub.statistics()
                        print("PERSISTED", i + 1, st.readings_sent, flush=True)
                    if i % 100 == 99:
                        await anyio.sleep(0.005)  # about 15,000 readings/s, continuously
                await pub.flush()
                print("DONE", flush=True)
                await anyio.sleep(3600)

    anyio.run(main, *sys.argv[1:6], int(sys.argv[6]), int(sys.argv[7]))
    """
)
T0 = 1_700_000_000_000


_rng = random.Random(7)
VALUES = [_rng.randrange(2**20) for _ in range(50_000)]  # as the child draws them


async def test_kill_9_in_the_middle_of_50000_readings_delivers_each_persisted_one_once(
    hs, make_user, make_client, tmp_path
):
    n, every, kill_after = 50_000, 2_500, 25_000
    dash_c = await make_user("dash", relaxed=True)
    dev_c = await make_user("dev", relaxed=True)
    dash = await make_client(dash_c)
    room = await dash.create_room("crash-readings", invite=[dev_c.user_id])
    async with Client(hs.url, dev_c.user_id, password=dev_c.password) as joiner:
        await joiner.join(room)
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    store = tmp_path / "publisher.db"
    child = Child(script, hs.url, dev_c.user_id, dev_c.password, str(store), room,
                  str(n), str(every))
    checkpoints: list[tuple[int, int]] = []
    try:
        assert await child.line() == "READY"
        while not checkpoints or checkpoints[-1][0] < kill_after:
            word, published, sent = (await child.line(deadline=120)).split()
            assert word == "PERSISTED", word
            checkpoints.append((int(published), int(sent)))
        await anyio.sleep(0.3)  # it goes on publishing, sealing and sending
    finally:
        child.kill()
    persisted, sent_before = checkpoints[-1]
    assert 0 < sent_before < persisted  # killed with readings sent and readings unsent

    async with (
        Client(hs.url, dev_c.user_id, password=dev_c.password, store_path=store) as again,
        again.publisher(room, device="logger", presence=False) as pub,
    ):
        with anyio.fail_after(60):
            await pub.flush()

    # The homeserver's own history is the truth.
    events = []
    token = None
    with anyio.fail_after(60):
        while True:
            page = await dash.messages(room, token, direction="f", types=[READINGS])
            events += page.events
            if not page.events or page.end is None:
                break
            token = page.end
    seqs = []
    readings = []
    for ev in events:
        batch = decode_batch(ev.content)
        seqs.append(batch[0].seq)
        # Within a batch the decoder yields series after series; put them back in
        # publication order (time order: reading i has time T0 + i).
        readings += sorted(batch, key=lambda r: r.t_ms)
    assert len(seqs) >= 40  # many batches: sealed, in flight and sent at the kill
    assert seqs == list(range(len(seqs))), seqs  # consecutive, no duplicate, in order
    keys = [(r.sensor, r.t_ms) for r in readings]
    assert len(set(keys)) == len(keys)  # each (sensor, t) exactly once
    got = len(readings)
    # Every persisted reading arrived; what arrived is exactly the first `got` ones.
    assert persisted <= got <= n, (persisted, got)
    assert [(r.sensor, r.t_ms, r.value) for r in readings] == [
        (f"s{i % 5}", T0 + i, VALUES[i]) for i in range(got)
    ]
    assert {r.device for r in readings} == {"logger"}


# ------------------------------------- a restart with batches left in the outbox

#: A device that hands one batch to the outbox while the homeserver refuses its
#: sends (429: its rate limit was used up by the test), says so, and waits to be killed.
HANDED = textwrap.dedent(
    """
    import sys, anyio
    from mxsync import Client

    async def main(url, user, password, store, room, n):
        async with Client(url, user, password=password, store_path=store,
                          encryption=False) as c:
            async with c.publisher(room, device="handed", presence=False,
                                   max_age=0.01) as pub:
                print("READY", flush=True)
                await anyio.to_thread.run_sync(sys.stdin.readline)  # the limit is used up
                for i in range(n):
                    pub.publish("n", i, t=1_700_000_000_000 + i)
                with anyio.fail_after(30):
                    while pub.statistics().buffered or not c.outbox.statistics().rate_limited:
                        await anyio.sleep(0.01)
                st = pub.statistics()
                print("HANDED", st.in_flight, st.batches_sent, flush=True)
                await anyio.sleep(3600)

    anyio.run(main, *sys.argv[1:6], int(sys.argv[6]))
    """
)


async def use_up_rate_limit(client: Client, room: str) -> int:
    """Send as ``client``'s user until the homeserver answers 429; how many it took."""
    for i in range(40):
        try:
            await client.request(api.send_event(room, "org.mxsync.test.filler",
                                                f"filler-{uuid.uuid4().hex}", {"i": i}))
        except RateLimitedError:
            return i
    raise AssertionError("the homeserver never rate-limited the user")


async def test_flush_after_a_kill_9_waits_for_the_batches_the_killed_run_left_in_the_outbox(
    hs, make_user, make_client, tmp_path
):
    """Killed with a batch in the outbox that the homeserver refused for its rate
    limit (429) until then; started again while the limit still holds: flush()
    returns only once those readings are on the homeserver."""
    n = 100
    dash = await make_client(await make_user("dash", relaxed=True))
    dev_c = await make_user("handed")  # the default rate limit: 0.2 events/s, burst 10
    room = await dash.create_room("handed", invite=[dev_c.user_id])
    filler = await make_client(dev_c, store=False, encryption=False)  # same user, 2nd device
    await filler.join(room)
    script = tmp_path / "handed.py"
    script.write_text(HANDED)
    store = tmp_path / "handed.db"
    child = Child(script, hs.url, dev_c.user_id, dev_c.password, str(store), room, str(n))
    try:
        assert await child.line() == "READY"
        await use_up_rate_limit(filler, room)
        child.say("GO")
        word, in_flight, sent = (await child.line()).split()
        assert (word, in_flight, sent) == ("HANDED", "1", "0")
    finally:
        child.kill()
    # The readings are in the killed run's outbox only; keep the limit in force.
    await use_up_rate_limit(filler, room)

    async def on_the_homeserver() -> list[int]:
        page = await dash.messages(room, None, direction="b", limit=50, types=[READINGS])
        return sorted(r.value for ev in page.events for r in decode_batch(ev.content))

    async with (
        Client(hs.url, dev_c.user_id, password=dev_c.password, store_path=store,
               encryption=False) as again,
        again.publisher(room, device="handed", presence=False) as pub,
    ):
        st = pub.statistics()
        assert (st.buffered, st.resumed_in_outbox, st.in_flight) == (0, 1, 1)
        started = time.monotonic()
        with anyio.fail_after(60):
            await pub.flush()
        waited = time.monotonic() - started
        # Readable by any reader the moment flush() returns.
        assert await on_the_homeserver() == list(range(n))
        assert pub.statistics().in_flight == 0
    print(f"flush after the restart waited {waited:.1f}s for the rate limit")
    assert again.outbox.statistics().rate_limited >= 1  # it did wait for a 429


# -------------------------------------------------------------------- an outage

OUTAGE_S = 20.0


async def test_outage_of_20s_under_two_editors_and_a_device_loses_nothing_and_backs_off(
    tmp_path,
):
    """Synapse is stopped for 20 s while Alice and Bob edit one document and a device
    publishes; Bob's dashboard subscribes. After the restart everything converges,
    every edit and reading arrives once, and the clients' requests during the outage
    stay few: bounded backoff, no spin."""
    port = free_port()
    async with DevServer(tmp_path / "hs", port=port, rate_limits="relaxed") as hs:
        creds = {name: await hs.register(name) for name in ("alice", "bob", "dev")}

        def client(name: str) -> Client:
            c = creds[name]
            return Client(hs.url, c.user_id, password=c.password,
                          store_path=tmp_path / f"{name}.db")

        async with client("alice") as alice, client("bob") as bob, client("dev") as dev:
            clients = {"alice": alice, "bob": bob, "dev": dev}
            room = await alice.create_room("outage",
                                           invite=[bob.user_id, dev.user_id])
            await bob.join(room)
            await dev.join(room)
            async with (
                alice.open_doc(room, "plan") as da,
                bob.open_doc(room, "plan") as db,
                bob.subscribe(room) as sub,
                dev.publisher(room, device="meter", offline_after=60.0) as pub,
            ):
                with anyio.fail_after(60):
                    await da.wait_synced()
                    await db.wait_synced()
                    await pub.wait_online()
                arr_a = da.doc.get("a", type=pycrdt.Array)
                arr_b = db.doc.get("a", type=pycrdt.Array)
                arr_a.append("a-before")
                pub.publish("w", -1, t=T0 - 1)
                with anyio.fail_after(60):
                    await da.flush()
                    await pub.flush()
                await until(lambda: arr_b.to_py() == ["a-before"])

                await hs.stop()
                before = {k: c.http.requests for k, c in clients.items()}
                published = [-1]
                for step in range(40):  # 20 s: both edit, the device publishes
                    arr_a.append(f"a{step}")
                    arr_b.append(f"b{step}")
                    da.doc.get("t", type=pycrdt.Text).insert(0, string.ascii_lowercase[
                        step % 26])
                    for k in range(5):
                        i = step * 5 + k
                        pub.publish("w", i, t=T0 + i)
                        published.append(i)
                    await anyio.sleep(OUTAGE_S / 40)
                during = {k: c.http.requests - before[k] for k, c in clients.items()}
                states = {k: c.status.state for k, c in clients.items()}
                assert db.statistics().pending_edits > 0  # nothing could go out
                await hs.start()
                assert hs.port == port

                with anyio.fail_after(120):
                    await da.flush()
                    await db.flush()
                    await pub.flush()
                want = {"a-before", *(f"a{s}" for s in range(40)),
                        *(f"b{s}" for s in range(40))}
                await until(lambda: set(arr_a.to_py()) == want
                            and doc_values(da.doc) == doc_values(db.doc)
                            and decode_state_vector(da.doc.get_state())
                            == decode_state_vector(db.doc.get_state()), deadline=60)
                assert len(arr_a.to_py()) == len(want)  # each edit once
                assert decoded(da.doc) == decoded(db.doc) == doc_values(da.doc)
                live: list[int] = []
                with anyio.fail_after(60):
                    async for r in sub:
                        live.append(r.value)  # type: ignore[arg-type]
                        if len(live) == len(published):
                            break
                with anyio.move_on_after(1.0):
                    extra = await sub.__anext__()
                    pytest.fail(f"a reading came twice: {extra}")
                assert sub.statistics().duplicates == 0
    assert live == published  # every reading once, in order
    assert set(states.values()) == {"backing_off"}, states
    # Each client runs a sync loop (backoff 0.5 s doubling, capped at 30 s: 6-8
    # attempts in 20 s) and one retrying task per busy outbox lane (same backoff);
    # the device also restarts its last will (backoff 0.5..10 s). That is a couple
    # of dozen requests per client at most; a spin would be thousands.
    # Traced (2026-12-01, every request of the 20 s by path): 20, 23 and 24. Alice
    # and Bob: 8-10 liveness probes (GET /versions, one per ~1.75 s), 6 /sync
    # retries, 6-7 retries of their one document lane; the device: 6 probes, 5
    # /sync, 6 each for its two lanes (sensor state, readings), 1 last-will restart.
    assert max(during.values()) <= 30, during
