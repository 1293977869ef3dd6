"""End-to-end encrypted rooms against a real Synapse.

Documents and readings in a room created with ``encrypted=True``: they converge
and arrive exactly, the homeserver's database holds none of their plaintext, a
plain matrix-nio E2EE client reads and writes them, and a restarted client
(same store) still decrypts. Users are relaxed (no message rate limit).
"""

from __future__ import annotations

import base64
import random
import secrets
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pycrdt
import pytest
from nio import AsyncClient, AsyncClientConfig, JoinResponse, ToDeviceMessage, UnknownEvent

from mxsync import Client
from mxsync.dev import DevServer
from mxsync.protocol import docs as proto
from mxsync.protocol.readings import decode_batch
from mxsync.protocol.types import DOC_UPDATE, MAX_ENCRYPTED_CONTENT_BYTES, READINGS

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


async def until(cond: Callable[[], bool], *, deadline: float = 60.0) -> None:
    with anyio.fail_after(deadline):
        while not cond():  # noqa: ASYNC110 - a predicate over several objects, polled
            await anyio.sleep(0.05)


def text(sdoc) -> str:
    return str(sdoc.doc.get("t", type=pycrdt.Text))


async def encrypted_room(make_user, make_client, n: int, *,
                         relaxed: bool = True) -> tuple[str, list[Client], list]:
    creds = [await make_user(f"e{i}", relaxed=relaxed) for i in range(n)]
    first = await make_client(creds[0])
    room = await first.create_room("e2ee", invite=[c.user_id for c in creds[1:]],
                                   encrypted=True)
    clients = [first]
    for c in creds[1:]:
        client = await make_client(c)
        await client.join(room)
        clients.append(client)
    return room, clients, creds


def db_bytes(hs: DevServer) -> bytes:
    """Every byte of the homeserver's SQLite database, write-ahead log included."""
    return b"".join(p.read_bytes() for p in sorted(hs.state_dir.glob("homeserver.db*")))


def b64_forms(marker: bytes) -> list[bytes]:
    """Substrings that the base64 of any text containing ``marker`` contains
    (one per alignment), so a grep finds base64-wrapped plaintext too."""
    out = []
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + marker)
        out.append(enc[4 if shift else 0 : len(enc) - 4])
    return out


def leaks(data: bytes, marker: bytes) -> bool:
    return marker in data or any(form in data for form in b64_forms(marker))


async def test_three_clients_edit_one_encrypted_document_and_converge(make_user, make_client):
    room, clients, _ = await encrypted_room(make_user, make_client, 3)
    async with AsyncExitStack() as stack:
        docs = [await stack.enter_async_context(c.open_doc(room)) for c in clients]
        with anyio.fail_after(60):
            for d in docs:
                await d.wait_synced()
        for i in range(15):
            for k, d in enumerate(docs):
                d.doc.get("t", type=pycrdt.Text).insert(0, f"{k}:{i} ")
            await anyio.sleep(0.02)
        with anyio.fail_after(90):
            for d in docs:
                await d.flush()
        want = sum(len(f"{k}:{i} ") for i in range(15) for k in range(3))
        await until(lambda: len({text(d) for d in docs}) == 1 and len(text(docs[0])) == want)
        assert all(d.statistics().skipped == 0 for d in docs)
    for c in clients:
        st = c.crypto_statistics()
        assert st is not None and st.undecryptable == 0 and st.encrypted > 0, st


async def test_two_clients_converge_and_the_server_db_holds_no_plaintext(
    hs, make_user, make_client
):
    room, (a, b), _ = await encrypted_room(make_user, make_client, 2)
    secret = f"SECRET-{secrets.token_hex(8)}".encode()
    async with a.open_doc(room) as da, b.open_doc(room) as db:
        with anyio.fail_after(60):
            await da.wait_synced()
            await db.wait_synced()
        for i in range(20):
            da.doc.get("t", type=pycrdt.Text).insert(0, f"a{i} ")
            db.doc.get("t", type=pycrdt.Text).insert(0, f"b{i} ")
            await anyio.sleep(0.02)
        da.doc.get("t", type=pycrdt.Text).insert(0, secret.decode())
        # A paste far over one encrypted event's budget: chunks, none refused.
        big = secrets.token_hex(60_000)
        db.doc.get("t", type=pycrdt.Text).insert(0, big)
        with anyio.fail_after(90):
            await da.flush()
            await db.flush()
        await until(lambda: text(da) == text(db) and secret.decode() in text(db))
        assert big in text(da)
        assert da.statistics().skipped == db.statistics().skipped == 0
    for c in (a, b):
        st = c.crypto_statistics()
        assert st is not None and st.encrypted > 0 and st.undecryptable == 0, st
        assert c.statistics().outbox.failed == 0
    # The grep finds cleartext: the same marker in a cleartext room is in the file.
    plain_marker = f"PLAIN-{secrets.token_hex(8)}"
    plain_room = await a.create_room("clear")
    async with a.open_doc(plain_room) as dp:
        dp.doc.get("t", type=pycrdt.Text).insert(0, plain_marker)
        await dp.flush()
    data = db_bytes(hs)
    assert leaks(data, plain_marker.encode())
    assert not leaks(data, secret)
    assert not leaks(data, big[:64].encode())


async def test_readings_arrive_exactly_in_order_in_full_encrypted_batches(
    hs, make_user, make_client
):
    room, (dash, dev), _ = await encrypted_room(make_user, make_client, 2)
    marker = "reading-" + secrets.token_hex(6)
    n = 20_000
    # Noisy integers: about 3 bytes a reading, so batches fill the encrypted budget.
    rng = secrets.SystemRandom()
    values = [rng.randrange(1_000_000) for _ in range(n)]
    async with dash.subscribe(room) as sub:
        async with dev.publisher(room, device="meter-1") as pub:
            pub.publish("label", marker)
            for v in values:
                pub.publish("power", v)
            with anyio.fail_after(120):
                await pub.flush()
            stats = pub.statistics()
        got = []
        with anyio.fail_after(60):
            async for r in sub:
                got.append(r)
                if len(got) == n + 1:
                    break
    assert stats.readings_sent == n + 1 and stats.batches_sent >= 2, stats
    assert dev.statistics().outbox.failed == 0
    assert [r.value for r in got if r.sensor == "power"] == values
    assert [r.value for r in got if r.sensor == "label"] == [marker]
    assert sub.statistics().duplicates == 0 and sub.statistics().gaps == 0
    assert not leaks(db_bytes(hs), marker.encode())
    # The batches were large, near the encrypted budget, and none was refused.
    assert stats.bytes_sent >= (stats.batches_sent - 1) * MAX_ENCRYPTED_CONTENT_BYTES // 2, stats
    assert stats.failed == 0, stats


async def nio_client(hs: DevServer, creds, store: Path) -> AsyncClient:
    store.mkdir(exist_ok=True)
    client = AsyncClient(hs.url, creds.user_id, store_path=str(store),
                         config=AsyncClientConfig(encryption_enabled=True,
                                                  store_sync_tokens=True))
    await client.login(creds.password)
    await client.sync(timeout=0)
    if client.should_upload_keys:
        await client.keys_upload()
    return client


async def test_a_plain_nio_client_reads_and_writes_mxsync_updates(
    hs, make_user, make_client, tmp_path
):
    creds_a = await make_user("ma", relaxed=True)
    creds_n = await make_user("nio", relaxed=True)
    a = await make_client(creds_a)
    n = await nio_client(hs, creds_n, tmp_path / "nio")
    try:
        room = await a.create_room("interop", invite=[creds_n.user_id], encrypted=True)
        await n.sync(timeout=0)
        assert isinstance(await n.join(room), JoinResponse)
        await n.sync(timeout=0)
        async with a.open_doc(room, "shared") as da:
            with anyio.fail_after(60):
                await da.wait_synced()
            da.doc.get("t", type=pycrdt.Text).insert(0, "from mxsync")
            await da.flush()
            seen: list[dict] = []
            with anyio.fail_after(60):
                while not seen:
                    resp = await n.sync(timeout=2_000)
                    joined = getattr(resp, "rooms", None)
                    info = joined.join.get(room) if joined else None
                    for ev in info.timeline.events if info else []:
                        if isinstance(ev, UnknownEvent) and ev.type == DOC_UPDATE:
                            seen.append(ev.source["content"])
            fresh: pycrdt.Doc = pycrdt.Doc()
            decoded = proto.decode_doc_event(DOC_UPDATE, seen[0])  # either form
            assert isinstance(decoded, proto.DocUpdate)
            fresh.apply_update(decoded.update)
            assert str(fresh.get("t", type=pycrdt.Text)) == "from mxsync"
            # And back: nio encrypts an update of its own; mxsync applies it.
            fresh.get("t", type=pycrdt.Text).insert(0, "from nio, ")
            (content,) = proto.encode_update("shared", fresh.get_update())
            sent = await n.room_send(room, DOC_UPDATE, content, ignore_unverified_devices=True)
            assert getattr(sent, "event_id", None), sent
            await until(lambda: text(da) == "from nio, from mxsync")
        # History pages: the type filter lets the encrypted events through and
        # applies to what they decrypt to.
        page = await a.messages(room, types=[DOC_UPDATE])
        assert [e.type for e in page.events] == [DOC_UPDATE, DOC_UPDATE]
        assert {e.sender for e in page.events} == {creds_a.user_id, creds_n.user_id}
    finally:
        await n.close()


async def test_a_restarted_client_still_decrypts(hs, make_user, make_client, tmp_path):
    creds_a = await make_user("ra", relaxed=True)
    creds_b = await make_user("rb", relaxed=True)
    a = await make_client(creds_a)
    room = await a.create_room("restart", invite=[creds_b.user_id], encrypted=True)
    store = tmp_path / "b.db"

    def client_b() -> Client:
        return Client(hs.url, creds_b.user_id, password=creds_b.password, store_path=store)

    async with a.open_doc(room) as da:
        async with client_b() as b:
            await b.join(room)
            keys = b.crypto.identity_keys if b.crypto else None
            async with b.open_doc(room) as db:
                da.doc.get("t", type=pycrdt.Text).insert(0, "before ")
                await da.flush()
                await until(lambda: text(db) == "before ")
        # B is gone; A writes in the same megolm session.
        da.doc.get("t", type=pycrdt.Text).insert(0, "while away ")
        await da.flush()
        async with client_b() as b:
            assert b.crypto is not None and b.crypto.identity_keys == keys
            async with b.open_doc(room) as db:
                await until(lambda: text(db) == "while away before ")
                da.doc.get("t", type=pycrdt.Text).insert(0, "after ")
                await da.flush()
                await until(lambda: text(db) == text(da))
            # History pages decrypt after the restart too, with the stored keys.
            page = await b.messages(room, types=[DOC_UPDATE])
            assert len(page.events) >= 3 and all(e.type == DOC_UPDATE for e in page.events)
            st = b.crypto_statistics()
            assert st is not None and st.undecryptable == 0, st
    assert oct((tmp_path / "b.db.olm").stat().st_mode & 0o777) == "0o600"


async def test_state_events_stay_cleartext_and_readable(make_user, make_client):
    room, (a, b), _ = await encrypted_room(make_user, make_client, 2)
    async with a.publisher(room, device="dev-1") as pub:
        pub.declare("temp", unit="Cel", name="Boiler")
        pub.publish("temp", 21)
        await pub.flush()
    sensors = await b.room_state(room)
    assert any(ev.type.startswith("org.mxsync.") and ev.state_key is not None for ev in sensors)
    assert READINGS not in {ev.type for ev in sensors}


@pytest.mark.parametrize("visibility", ["invited", "joined"])
async def test_a_late_joiner_gets_the_document_from_a_snapshot_it_asked_for(
    make_user, make_client, visibility
):
    creds_a = await make_user("la", relaxed=True)
    creds_b = await make_user("lb", relaxed=True)
    a = await make_client(creds_a)
    room = await a.create_room("late", invite=[creds_b.user_id], encrypted=True)
    # History not shared with newcomers: no old session key is forwarded to Bob
    # (mxsync forwards under "shared" only), so the document reaches him only as
    # a snapshot he asks for. Under "invited" he sees the events he cannot
    # decrypt; under "joined" the server shows him none of them.
    await a.nio.room_put_state(room, "m.room.history_visibility",
                               {"history_visibility": visibility})
    async with a.open_doc(room) as da:
        for i in range(5):
            da.doc.get("t", type=pycrdt.Text).insert(0, f"early{i} ")
            await da.flush()
        # Bob joins after all of it was written: no session of it was shared with him.
        b = await make_client(creds_b)
        await b.join(room)
        async with b.open_doc(room, read_only=True) as db:
            await until(lambda: text(db) == text(da))
            st = b.crypto_statistics()
            assert st is not None, st
            assert db.statistics().skipped == 0
            if visibility == "invited":
                assert st.undecryptable >= 5, st
                await until(lambda: a.crypto_statistics().key_requests_refused >= 1)
            else:
                assert st.undecryptable == 0 and st.keys_requested == 0, st
            assert a.crypto_statistics().keys_forwarded == 0
            # From then on Bob reads the live updates too.
            da.doc.get("t", type=pycrdt.Text).insert(0, "later ")
            await until(lambda: text(db) == text(da))


KILLED_PUBLISHER = """
import json, random, sys, anyio
from mxsync import Client

cfg = json.loads(sys.argv[1])

async def main():
    async with Client(cfg["url"], cfg["user"], password=cfg["password"],
                      store_path=cfg["store"]) as c:
        async with c.publisher(cfg["room"], device="burst", window=1, max_age=3600,
                               max_bytes=8192, presence=False) as pub:
            rng = random.Random(cfg["seed"])
            for i in range(cfg["n"]):
                pub.publish("v", rng.randrange(-2**20, 2**20))
                if i % 1000 == 0:
                    await anyio.lowlevel.checkpoint()  # the pump seals full batches meanwhile
            await pub.persist()
            with anyio.fail_after(60):  # default rate limits: sealed batches pile up
                while pub.statistics().batches_sent < 3 or pub.statistics().sealed_pending < 2:
                    await anyio.sleep(0.02)
            print(json.dumps({"sent": pub.statistics().batches_sent}), flush=True)
            await anyio.sleep(3600)

anyio.run(main)
"""


async def test_kill_9_mid_burst_loses_and_duplicates_nothing(hs, make_user, make_client, tmp_path):
    import json
    import subprocess
    import sys

    n = 40_000  # about 15 batches of 8 KiB: more than Synapse's burst of 10
    room, (dash, _), (_, dev_creds) = await encrypted_room(make_user, make_client, 2,
                                                           relaxed=False)
    store = tmp_path / "burst.db"
    cfg = {"url": hs.url, "user": dev_creds.user_id, "password": dev_creds.password,
           "store": str(store), "room": room, "n": n, "seed": 11}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISHER, json.dumps(cfg)],
                            stdout=subprocess.PIPE)
    try:
        with anyio.fail_after(120):
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(timeout=10)
    assert json.loads(line)["sent"] >= 3
    await hs.override_ratelimit(dev_creds.user_id)
    async with Client(hs.url, dev_creds.user_id, password=dev_creds.password,
                      store_path=store) as again:
        async with again.publisher(room, device="burst", presence=False) as pub:
            with anyio.fail_after(120):
                await pub.flush()
    seqs: list[int] = []
    values: list[object] = []
    async for page in dash.pages(room, direction="f", types=[READINGS]):
        for ev in page.events:
            batch = decode_batch(ev.content)
            seqs.append(batch[0].seq)
            values.extend(r.value for r in batch)
    assert seqs == list(range(len(seqs)))  # every batch once, none lost
    rng = random.Random(11)
    assert values == [rng.randrange(-2**20, 2**20) for _ in range(n)]
    st = dash.crypto_statistics()
    assert st is not None and st.undecryptable == 0, st


async def test_a_late_dashboard_reads_the_history_written_before_it_joined(
    make_user, make_client
):
    """The publisher forwards its own sessions to a member who asks (shared
    history visibility); a non-member's request is refused."""
    creds_dev = await make_user("hdev", relaxed=True)
    creds_dash = await make_user("hdash", relaxed=True)
    dev = await make_client(creds_dev)
    room = await dev.create_room("late-history", invite=[creds_dash.user_id], encrypted=True)
    start = int(time.time() * 1000) - 60_000
    async with dev.publisher(room, device="early", presence=False) as pub:
        for i in range(300):
            pub.publish("v", i, t=start + i * 100)
        with anyio.fail_after(60):
            await pub.flush()
        assert pub.statistics().batches_sent >= 1
        # The dashboard joins after every batch was written: no session was shared with it.
        dash = await make_client(creds_dash)
        await dash.join(room)
        async with dash.subscribe(room) as sub:
            with anyio.fail_after(60):
                got = await sub.history("v", start, start + 300 * 100)
        assert [r.value for r in got] == list(range(300))
        st_dash, st_dev = dash.crypto_statistics(), dev.crypto_statistics()
        assert st_dash is not None and st_dash.keys_requested >= 1, st_dash
        assert st_dev is not None and st_dev.keys_forwarded >= 1, st_dev
        # Someone who is not in the room asks for the same session: refused.
        session = next(s.id for s in dash.nio.olm.inbound_group_store if s.room_id == room)
        outsider = await make_client(await make_user("hout", relaxed=True))
        content = {"action": "request", "request_id": "r1",
                   "requesting_device_id": outsider.device_id,
                   "body": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": room,
                            "sender_key": dev.nio.olm.account.identity_keys["curve25519"],
                            "session_id": session}}
        await outsider.nio.to_device(
            ToDeviceMessage("m.room_key_request", dev.user_id, "*", content), "t1")
        await until(lambda: dev.crypto_statistics().key_requests_refused >= 1)
        assert dev.crypto_statistics().keys_forwarded == st_dev.keys_forwarded
