"""Awareness and live updates over to-device messages, against a real Synapse.

Synapse runs with its default rate limits (``rc_message`` 0.2 events/s, burst
10). Every wait has a deadline (``until``); the awareness expiry is proven with
a short ``awareness_timeout`` so that the test does not wait out 30 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pycrdt
import pytest

from mxsync import SyncedDoc
from mxsync.protocol.types import DOC_AWARENESS, DOC_LIVE, DOC_SNAPSHOT, DOC_UPDATE

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


async def until(cond: Callable[[], bool], *, deadline: float = 30.0) -> None:
    with anyio.fail_after(deadline):
        while not cond():  # noqa: ASYNC110 - a predicate over several objects, polled
            await anyio.sleep(0.02)


def text(sdoc: SyncedDoc) -> str:
    return str(sdoc.doc.get("t", type=pycrdt.Text))


async def two_members(make_user, make_client, *, relaxed: bool) -> tuple[str, Any, Any]:
    ca, cb = await make_user("la", relaxed=relaxed), await make_user("lb", relaxed=relaxed)
    a = await make_client(ca)
    room = await a.create_room("live", invite=[cb.user_id])
    b = await make_client(cb)
    await b.join(room)
    return room, a, b


async def peered(da: SyncedDoc, db: SyncedDoc) -> None:
    """Both documents loaded, and the first knows the second as its peer."""
    with anyio.fail_after(60):
        await da.wait_synced()
        await db.wait_synced()
    await until(lambda: (da.channel_statistics() or _never).peers == 1)


async def doc_events(client: Any, room: str) -> list[Any]:
    """Every event of the room's history a document could hold."""
    events = []
    async for page in client.pages(room, types=[DOC_UPDATE, DOC_SNAPSHOT, DOC_AWARENESS,
                                                DOC_LIVE]):
        events.extend(page.events)
    return events


async def test_awareness_reaches_the_other_replica_expires_and_never_enters_history(
    make_user, make_client
):
    room, a, b = await two_members(make_user, make_client, relaxed=False)
    async with b.open_doc(room, awareness_timeout=3.0) as db:
        async with a.open_doc(room, awareness_timeout=3.0) as da:
            with anyio.fail_after(60):
                await da.wait_synced()
                await db.wait_synced()
            ida, idb = da.awareness.client_id, db.awareness.client_id
            da.awareness.set_local_state({"user": "alice", "cursor": 1})
            db.awareness.set_local_state({"user": "bob", "cursor": 2})
            await until(lambda: db.awareness.states.get(ida) == {"user": "alice", "cursor": 1}
                        and da.awareness.states.get(idb) == {"user": "bob", "cursor": 2})
            # A burst of cursor moves is coalesced and paced; the last one wins.
            for i in range(50):
                da.awareness.set_local_state_field("cursor", 100 + i)
            await until(lambda: db.awareness.states.get(ida, {}).get("cursor") == 149)
            stats = da.channel_statistics()
            assert stats is not None and stats.enabled and stats.peers == 1
            assert stats.awareness_sent < 20, stats  # 50 changes, a few messages
            # Renewed while open: still there after more than the timeout.
            await anyio.sleep(4.0)
            assert db.awareness.states.get(ida, {}).get("user") == "alice"
            # Alice vanishes without a goodbye (a crash): her state expires at Bob's.
            da._channel.awareness.bye = _no_bye  # type: ignore[union-attr,method-assign]
        left = time.monotonic()
        assert ida in db.awareness.states
        await until(lambda: ida not in db.awareness.states, deadline=10.0)
        assert time.monotonic() - left >= 1.0  # expired by the timeout, not at once
        await until(lambda: (db.channel_statistics() or _never).peers == 0, deadline=10.0)
        assert db.statistics().batches_sent == 0

    # With the ordinary 30 s timeout, a goodbye removes the state at once.
    async with b.open_doc(room) as db, a.open_doc(room) as da:
        da.awareness.set_local_state({"user": "alice again"})
        ida = da.awareness.client_id
        await until(lambda: db.awareness.states.get(ida) == {"user": "alice again"})
        await da.__aexit__(None, None, None)
        await until(lambda: ida not in db.awareness.states, deadline=5.0)
        assert da.statistics().batches_sent == db.statistics().batches_sent == 0

    # Nothing of it is in the room: no update, no snapshot, no awareness event.
    assert await doc_events(a, room) == []


async def _no_bye() -> None:
    return None


class _Never:
    peers = -1


_never = _Never()


async def test_live_updates_arrive_while_the_timeline_is_throttled(make_user, make_client):
    room, a, b = await two_members(make_user, make_client, relaxed=False)
    async with a.open_doc(room) as da, b.open_doc(room) as db:
        with anyio.fail_after(60):
            await da.wait_synced()
            await db.wait_synced()
        await until(lambda: (da.channel_statistics() or _never).peers == 1
                    and (db.channel_statistics() or _never).peers == 1)
        # Use up Alice's burst: from here on her timeline gets a slot every 5 s.
        handles = [await a.send(room, "org.mxsync.test.filler", {"i": i}) for i in range(10)]
        with anyio.fail_after(90):
            for h in handles:
                await h.wait()
        applied_before = db.statistics().updates_applied
        typed = "hello, live world"
        t = da.doc.get("t", type=pycrdt.Text)
        late: list[float] = []
        for ch in typed:
            t.insert(len(t), ch)
            sent = time.monotonic()
            n = len(t)
            await until(lambda n=n: len(text(db)) >= n, deadline=5.0)
            late.append(time.monotonic() - sent)
        # All of it came live: the timeline brought at most a batch or two meanwhile.
        assert text(db) == typed
        assert db.statistics().updates_applied - applied_before <= 2
        assert (db.channel_statistics() or _never).live_applied >= len(typed) - 2  # type: ignore[attr-defined]
        assert da.statistics().pending_edits > 0  # the timeline is still behind
        # The timeline catches up; receiving everything twice changes nothing.
        with anyio.fail_after(90):
            await da.flush()
        await until(lambda: db.statistics().updates_applied > applied_before, deadline=30.0)
        assert text(db) == typed == text(da)
        assert db.statistics().skipped == 0


async def test_document_converges_through_the_timeline_when_to_device_is_lost(
    make_user, make_client
):
    room, a, b = await two_members(make_user, make_client, relaxed=True)
    real_send = a.to_device.send
    calls = {"live": 0}

    async def lossy(event_type: str, messages: dict[str, Any]) -> bool:
        # Every other live update is lost on the way; awareness goes through.
        if event_type == DOC_LIVE:
            calls["live"] += 1
            if calls["live"] % 2 == 0 or calls["live"] > 20:
                return True  # "accepted", never delivered
        return await real_send(event_type, messages)

    a.to_device.send = lossy
    async with a.open_doc(room) as da, b.open_doc(room) as db:
        await peered(da, db)
        t = da.doc.get("t", type=pycrdt.Text)
        m = da.doc.get("m", type=pycrdt.Map)
        for i in range(60):
            t.insert(len(t), f"{i},")
            m[f"k{i % 5}"] = i
            if i % 7 == 6:
                del t[0:1]
            await anyio.sleep(0.01)
        with anyio.fail_after(60):
            await da.flush()
        await until(lambda: da.doc.get_state() == db.doc.get_state()
                    and text(da) == text(db), deadline=30.0)
        assert db.doc.get("m", type=pycrdt.Map).to_py() == m.to_py()
        stats = db.channel_statistics()
        assert stats is not None and 0 < stats.live_applied < 60
        assert db.statistics().skipped == 0


async def test_an_encrypted_room_sends_nothing_over_to_device(make_user, make_client):
    ca, cb = await make_user("ea", relaxed=True), await make_user("eb", relaxed=True)
    a = await make_client(ca)
    room = await a.create_room("secret", invite=[cb.user_id], encrypted=True)
    b = await make_client(cb)
    await b.join(room)
    sent_before = a.to_device_statistics().sent
    async with a.open_doc(room) as da, b.open_doc(room) as db:
        with anyio.fail_after(60):
            await da.wait_synced()
            await db.wait_synced()
        da.awareness.set_local_state({"user": "alice"})
        da.doc.get("t", type=pycrdt.Text).insert(0, "by the timeline")
        await until(lambda: text(db) == "by the timeline", deadline=60.0)
        stats = da.channel_statistics()
        assert stats is not None and not stats.enabled and stats.live_sent == 0
        assert da.awareness.client_id not in db.awareness.states
    # Not one mxsync to-device request (megolm key sharing is nio's, counted elsewhere).
    assert a.to_device_statistics().sent == sent_before
    assert b.to_device_statistics().received == 0


async def test_the_timeline_batch_waits_for_the_live_send_but_never_for_a_hung_one(
    make_user, make_client
):
    """The homeserver handles an edit's to-device first: the timeline PUT of the
    batch starts once the live PUT has returned. A live send that hangs holds the
    timeline for at most the outbox's HOLD_MAX: the edit still lands."""
    room, a, b = await two_members(make_user, make_client, relaxed=True)
    async with a.open_doc(room) as da, b.open_doc(room) as db:
        await peered(da, db)
        t = da.doc.get("t", type=pycrdt.Text)
        with a.http.recording() as records:
            for ch in "abc":
                t.insert(len(t), ch)
                with anyio.fail_after(30):
                    await da.flush()
                await anyio.sleep(0.3)
        live = [r for r in records if "/sendToDevice/" + DOC_LIVE in r.path]
        timeline = [r for r in records if "/send/" + DOC_UPDATE in r.path]
        assert len(live) == len(timeline) == 3, records
        for sent_live, sent_timeline in zip(live, timeline, strict=True):
            assert sent_timeline.started >= sent_live.ended
        await until(lambda: text(db) == "abc")

        hung = anyio.Event()
        real_send = a.to_device.send

        async def hang(event_type: str, messages: dict[str, Any]) -> bool:
            if event_type != DOC_LIVE:
                return await real_send(event_type, messages)
            hung.set()
            await anyio.sleep(3600)  # cancelled when the document closes
            return False

        a.to_device.send = hang
        t.insert(len(t), "d")
        with anyio.fail_after(30):
            await hung.wait()
            await da.flush()  # the timeline did not wait for the hung live send
        await until(lambda: text(db) == "abcd")
        assert (db.channel_statistics() or _never).live_applied == 3  # type: ignore[attr-defined]
