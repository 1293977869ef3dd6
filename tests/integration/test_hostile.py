"""Hostile rooms, permissions and secrets, against a real Synapse.

- A member with write permission floods the room with garbage under mxsync's own
  event types (generated with hypothesis, sent over raw HTTP): the clients that
  follow the room keep working, their document equals a clean client's, their
  subscriber yields the valid readings, and their memory stays bounded.
- Rooms made by ``create_room`` give mxsync's types only to writers; a dashboard
  (reader) that tries to publish is refused by the homeserver and gets a clear
  error; events from senders without the level are ignored even if they arrive.
- No access token or password reaches the logs (at DEBUG), exceptions or reprs on
  the document and stream paths; the files that hold secrets are 0600.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import random
import stat
import time
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import anyio
import pycrdt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mxsync import Client, ForbiddenError, Reading, RoomEvent
from mxsync.engine.authz import levels_backwards
from mxsync.engine.events import MessagesPage
from mxsync.protocol.api import q
from mxsync.protocol.docs import decode_state_vector
from mxsync.protocol.readings import (
    MAX_T_MS,
    BatchEncoder,
    DeviceState,
    decode_batch,
    to_content,
)
from mxsync.protocol.types import (
    ALL_TYPES,
    DEVICE,
    DOC,
    DOC_SNAPSHOT,
    DOC_UPDATE,
    MAX_SAFE_INT,
    READINGS,
    SENSOR,
)
from mxsync.streams.history import BatchReader

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

DOC_NAME = "hostile"
END = "org.mxsync.hostile.end"


# ---------------------------------------------------------------------- helpers


async def until(cond: Callable[[], bool], *, deadline: float = 60.0) -> None:
    with anyio.fail_after(deadline):
        while not cond():  # noqa: ASYNC110 - a predicate over several objects, polled
            await anyio.sleep(0.02)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def values(doc: pycrdt.Doc) -> dict[str, Any]:
    return {"t": str(doc.get("t", type=pycrdt.Text)),
            "m": doc.get("m", type=pycrdt.Map).to_py()}


def yjs_update(text: str, client_id: int = 424242) -> bytes:
    """A valid update inserting ``text``. The client id is never random: hypothesis
    needs draws that repeat, and two different updates must never share a Yjs client
    id (see ``_fresh_client``)."""
    doc: pycrdt.Doc = pycrdt.Doc(client_id=client_id)
    doc.get("t", type=pycrdt.Text).insert(0, text)
    return doc.get_update()


_clients = itertools.count()


def _fresh_client() -> int:
    """A Yjs client id used by one generated update only, always 5 varint bytes.

    Two *different* updates under one (client id, clock) are an equivocation: Yjs
    keeps whichever it integrates first, so replicas that see them in different
    orders (a live follower in timeline order, a cold open from a snapshot) keep
    different ones. No Yjs client can tell; that is outside what the tests here
    can hold a reader to (see the report of issue #7), so the flood does not do it.
    """
    return 2**28 + next(_clients)


def valid_batch(device: str, seq: int, t0: int, n: int = 10) -> dict[str, Any]:
    enc = BatchEncoder()
    for i in range(n):
        enc.add("x", t0 + i * 1000, i, unit="W")
    return enc.encode(device, seq, session=1)


async def raw_put(session: aiohttp.ClientSession, hs_url: str, token: str, room: str,
                  etype: str, state_key: str | None, content: Any) -> tuple[int, Any]:
    """PUT an event with the sender's own access token, bypassing mxsync entirely."""
    if state_key is None:
        path = f"send/{q(etype)}/raw{uuid.uuid4().hex}"
    else:
        path = f"state/{q(etype)}/{q(state_key)}"
    url = f"{hs_url}/_matrix/client/v3/rooms/{q(room)}/{path}"
    async with session.put(url, json=content,
                           headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json(content_type=None)


# ------------------------------------------------------------ garbage strategies
#
# Everything here is valid canonical JSON (no floats, integers within ±(2^53 - 1),
# contents under the 64 KiB event limit), so that the homeserver stores it and the
# clients have to deal with it.

ints = st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
json_leaf = st.none() | st.booleans() | ints | st.text(max_size=24)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from([
    "v", "doc", "update", "state", "sv", "covers", "updates_since", "chunk", "device",
    "session", "seq", "t0_ms", "compression", "series", "data", "kind", "online",
    "since_ms", "last", "last_t_ms", "precision", "unit",
])
random_json = st.dictionaries(field_names | st.text(max_size=8), json_value, max_size=8)
not_a_str = json_value.filter(lambda v: not isinstance(v, str))
bad_b64 = st.sampled_from(["!!not base64!!", "AAA", "A===", "YWJj\n", "-_-_", "aGVsbG8",
                           "aGVsbG8=\n", " AAAA", "AAAA====", "ÿÿÿÿ"])
huge = st.integers(20_000, 50_000).map(lambda n: "Q" * n)  # a valid base64 of zeros, too
hexdigest = st.binary(min_size=32, max_size=32).map(lambda b: b.hex())
doc_names = st.sampled_from([DOC_NAME, DOC_NAME, DOC_NAME, "other", ""])


@st.composite
def mangled_update(draw: st.DrawFn) -> bytes:
    """A real Yjs update with bytes flipped, cut or inserted: mostly not an update."""
    raw = bytearray(yjs_update(draw(st.text(min_size=1, max_size=40)), _fresh_client()))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw) - 1))
        how = draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip":
            raw[i] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del raw[i:]
            if not raw:
                raw = bytearray(b"\x01")
        else:
            raw[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


@st.composite
def open_chunk(draw: st.DrawFn) -> dict[str, Any]:
    """One chunk of a set whose other chunks never come (held, then evicted)."""
    count = draw(st.integers(2, 6))
    step = draw(st.integers(1024, 9000))
    size = step * count
    index = draw(st.integers(0, count - 1))
    noise = random.Random(draw(st.integers(0, 2**32))).randbytes(step)
    return {"v": 1, "doc": DOC_NAME, "update": b64(noise),
            "chunk": {"id": f"open{draw(st.integers(0, 10**9))}", "i": index, "n": count,
                      "bytes": size, "sha256": draw(hexdigest)}}


@st.composite
def absurd_chunk(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed chunk announcing millions of parts (up to 10 GB): beyond 4,096
    parts or 16 MiB the assembler must refuse it without reserving anything."""
    count = draw(st.integers(5_000, 10_000_000))
    size = count * 1024 + draw(st.integers(0, 1023) if count > 16_384 else st.just(0))
    step = -(-size // count)
    return {"v": 1, "doc": DOC_NAME, "update": b64(bytes(step)),
            "chunk": {"id": f"absurd{draw(st.integers(0, 10**9))}", "i": 0, "n": count,
                      "bytes": size, "sha256": draw(hexdigest)}}


doc_update_garbage = st.one_of(
    random_json,
    st.builds(lambda d, u: {"v": 1, "doc": d, "update": u}, doc_names, not_a_str),
    st.builds(lambda d, u: {"v": 1, "doc": d, "update": u}, doc_names, bad_b64),
    st.builds(lambda d, u: {"v": 1, "doc": d, "update": u}, doc_names, huge),
    st.builds(lambda u: {"v": 1, "doc": DOC_NAME, "update": b64(u)}, st.binary(max_size=300)),
    st.builds(lambda u: {"v": 1, "doc": DOC_NAME, "update": b64(u)}, mangled_update()),
    st.builds(lambda v: {"v": v, "doc": DOC_NAME, "update": b64(yjs_update("EVIL"))},
              st.integers(2, 100) | st.just(0)),
    st.builds(lambda n: {"v": 1, "doc": "d" * n, "update": b64(yjs_update("EVIL"))},
              st.integers(256, 30_000)),
    open_chunk(),
    absurd_chunk(),
)
doc_snapshot_garbage = st.one_of(
    random_json,
    st.builds(lambda s, sv, c: {"v": 1, "doc": DOC_NAME, "state": s, "sv": sv, "covers": c},
              bad_b64 | huge | st.binary(max_size=200).map(b64), bad_b64 | st.none()
              | st.binary(max_size=30).map(b64), st.none() | st.text(max_size=40)),
    st.builds(lambda s: {"v": 1, "doc": DOC_NAME, "state": b64(s)}, mangled_update()),
    st.builds(lambda n: {"v": 1, "doc": DOC_NAME, "state": b64(yjs_update("EVIL")),
                         "updates_since": n}, ints),
)


@st.composite
def readings_garbage(draw: st.DrawFn) -> dict[str, Any]:
    content = valid_batch("mallory", draw(st.integers(0, 1000)), 1_700_000_000_000)
    how = draw(st.sampled_from(["random", "type", "b64", "bytes", "huge", "time", "n",
                                "series"]))
    if how == "random":
        return draw(random_json)
    if how == "type":
        content[draw(st.sampled_from(["device", "seq", "t0_ms", "series", "data",
                                      "compression", "session"]))] = draw(
            json_value.filter(lambda v: v is not None and not isinstance(v, int | str)))
    elif how == "b64":
        content["data"] = draw(bad_b64)
    elif how == "bytes":
        content["data"] = b64(draw(st.binary(min_size=1, max_size=200)))
        content["compression"] = draw(st.sampled_from(["zlib", "none", "gzip"]))
    elif how == "huge":
        content[draw(st.sampled_from(["device", "data", "compression"]))] = draw(huge)
    elif how == "time":
        # Impossible times: before 1970 or after 2200, directly or after the deltas.
        content["t0_ms"] = draw(st.integers(-MAX_SAFE_INT, -1)
                                | st.integers(MAX_T_MS + 1, MAX_SAFE_INT)
                                | st.integers(MAX_T_MS - 8_999, MAX_T_MS))
    elif how == "n":
        content["series"][0]["n"] = draw(st.integers(11, 10_000_000) | st.integers(-5, 0))
    else:
        content["series"] = draw(st.lists(random_json, max_size=3))
    return content


state_garbage = st.tuples(
    st.sampled_from([SENSOR, DEVICE]),
    st.sampled_from(["temp", "dev-1"]) | st.text(min_size=1, max_size=20),
    random_json | st.builds(lambda o, s: {"online": o, "since_ms": s}, json_value, json_value),
)

def draw_many(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """Up to ``n`` examples of ``strategy``, drawn deterministically by hypothesis.

    One run of ``@given`` collects them (no server round trip per example); the
    flood then sends them all at once.
    """
    out: list[Any] = []

    @settings(max_examples=n, derandomize=True, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out[:n]


def draw_garbage() -> list[tuple[str, str | None, dict[str, Any]]]:
    """About 240 hostile events of every kind, shuffled (deterministically)."""
    global _clients
    _clients = itertools.count()
    events: list[tuple[str, str | None, dict[str, Any]]] = [
        *((DOC_UPDATE, None, c) for c in draw_many(doc_update_garbage, 90)),
        *((DOC_SNAPSHOT, None, c) for c in draw_many(doc_snapshot_garbage, 40)),
        *((READINGS, None, c) for c in draw_many(readings_garbage(), 80)),
        *draw_many(state_garbage, 30),
    ]
    random.Random(0).shuffle(events)
    return events


# -------------------------------------------------------------- a hostile room


async def test_a_writer_flooding_garbage_leaves_documents_streams_and_memory_intact(
    hs, make_user, make_client
):
    """Alice writes cleanly, Mallory (also a writer) floods 240 garbage events, Bob
    follows the room live with a document and a subscriber. Bob applies Alice's edits
    and yields her readings before and after the flood, his document equals what a
    clean client opening the room afterwards gets, and his memory stays bounded."""
    garbage = draw_garbage()
    assert len(garbage) >= 200
    kinds = {t for t, _, _ in garbage}
    assert kinds == {DOC_UPDATE, DOC_SNAPSHOT, READINGS, SENSOR, DEVICE}
    alice_c = await make_user("alice", relaxed=True)
    mallory_c = await make_user("mallory", relaxed=True)
    bob_c = await make_user("bob", relaxed=True)
    carol_c = await make_user("carol", relaxed=True)
    alice = await make_client(alice_c)
    room = await alice.create_room(
        "hostile", invite=[mallory_c.user_id, bob_c.user_id, carol_c.user_id],
        writers=[mallory_c.user_id, bob_c.user_id],
    )
    bob = await make_client(bob_c)
    await bob.join(room)
    async with Client(hs.url, mallory_c.user_id, password=mallory_c.password) as m:
        await m.join(room)

    t0 = int(time.time() * 1000) - 60_000
    clean: list[tuple[int, int]] = []
    async with (
        alice.open_doc(room, DOC_NAME) as da,
        bob.open_doc(room, DOC_NAME) as db,
        bob.subscribe(room) as sub,
        alice.publisher(room, device="clean", presence=False) as pub,
        bob.room_events(room, [END]) as end_marks,
        aiohttp.ClientSession() as http,
    ):
        with anyio.fail_after(60):
            await da.wait_synced()
            await db.wait_synced()
        da.doc.get("t", type=pycrdt.Text).insert(0, "before.")
        da.doc.get("m", type=pycrdt.Map)["k"] = 1
        for i in range(10):
            pub.publish("v", i, t=t0 + i)
            clean.append((t0 + i, i))
        with anyio.fail_after(60):
            await da.flush()
            await pub.flush()
        await until(lambda: values(db.doc) == values(da.doc))

        # -- the flood, with tracemalloc watching the whole process
        tracemalloc.start()
        sem = anyio.Semaphore(8)
        answers: list[tuple[int, Any]] = [(0, None)] * len(garbage)

        async def put(k: int, etype: str, key: str | None, content: Any) -> None:
            async with sem:
                answers[k] = await raw_put(http, hs.url, mallory_c.access_token, room,
                                           etype, key, content)

        try:
            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for k, (etype, key, content) in enumerate(garbage):
                        tg.start_soon(put, k, etype, key, content)
                status, _ = await raw_put(http, hs.url, mallory_c.access_token, room, END,
                                          None, {})
                assert status == 200
                await end_marks.receive()  # Bob's sync loop has dispatched all of it
                # -- then clean writes again, and Bob must apply them
                da.doc.get("t", type=pycrdt.Text).insert(7, "after.")
                da.doc.get("m", type=pycrdt.Map)["k"] = 2
                for i in range(10, 20):
                    pub.publish("v", i, t=t0 + i)
                    clean.append((t0 + i, i))
                await da.flush()
                await pub.flush()
                await until(lambda: values(db.doc) == values(da.doc))
                got: list[Reading] = []
                async for r in sub:
                    got.append(r)
                    if r.device == "clean" and r.value == 19:
                        break
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        stored = sum(1 for s, _ in answers if s == 200)
        rejected = [a for a in answers if a[0] != 200]
        doc_stats = db.statistics()
        sub_stats = sub.statistics()
        bob_sv = decode_state_vector(db.doc.get_state())
        expected = values(da.doc)
        # Bob's client is still synced.
        assert bob.status.state == "synced"

    # The homeserver stored the garbage (it only refuses what is not JSON it likes).
    assert stored >= 0.9 * len(garbage), rejected[:5]
    # Alice's clean edits are in (Mallory may also send valid updates: a writer may
    # edit, and some mangled updates are still valid ones; all clients agree on them).
    assert expected["m"] == {"k": 2}
    assert all(ch in expected["t"] for ch in "before.after.")
    # Bob skipped the garbage and kept going.
    assert doc_stats.skipped >= 50, doc_stats
    assert sub_stats.malformed >= 20, sub_stats
    # Every clean reading exactly once, in order; anything else Bob yielded came from
    # a batch the reference decoder accepts (a valid batch Mallory was free to send).
    assert [(r.t_ms, r.value) for r in got if r.device == "clean"] == clean
    valid_from_mallory = set()
    for etype, _, content in garbage:
        if etype == READINGS:
            try:
                valid_from_mallory |= {(r.device, r.seq, r.t_ms) for r in decode_batch(content)}
            except Exception:
                pass
    for r in got:
        assert r.device == "clean" or (r.device, r.seq, r.t_ms) in valid_from_mallory, r

    # Memory stayed bounded: the chunk assembler holds at most Mallory's 4 sets (the
    # per-sender limit), far under its byte limit; the process's Python heap grew by
    # less than the bound below during the flood and the catch-up after it.
    chunks = doc_stats.chunks
    assert chunks.pending_sets <= 4, chunks
    assert chunks.pending_bytes <= 4 * 9000, chunks
    assert chunks.rejected >= 1 and chunks.evicted >= 1, chunks
    # tracemalloc counts what was allocated after it started (the flood's contents
    # were drawn before): the peak covers parsing every /sync answer of the flood and
    # the catch-up after it. Measured: ~1.7 MB peak and ~1.1 MB still held (LRUs of
    # event ids, captured log records) for ~0.9 MB of garbage JSON. The bounds are
    # several times that, and far below what a client that kept the flood (parsed,
    # ~5x its JSON) or reserved room for an announced set (the smallest absurd one
    # announces 5 MB; several were sent) would need.
    assert peak < 16 * 2**20, peak
    assert held < 4 * 2**20, held

    # A clean client that never saw the flood live opens the room cold: same document.
    carol = await make_client(carol_c)
    await carol.join(room)
    async with carol.open_doc(room, DOC_NAME, read_only=True) as dc:
        with anyio.fail_after(60):
            await dc.wait_synced()
        assert values(dc.doc) == expected
        assert decode_state_vector(dc.doc.get_state()) == bob_sv


@pytest.mark.xfail(strict=True, reason=(
    "known limit, not fixed: Yjs trusts (client id, clock) to name one struct; a writer "
    "who sends two different updates under the same ids leaves a live follower (timeline "
    "order) and a cold open (newest snapshot first) with different documents"))
async def test_an_equivocating_writer_cannot_split_live_and_cold_readers(
    hs, make_user, make_client
):
    alice = await make_client(await make_user("alice", relaxed=True))
    mallory_c = await make_user("mallory", relaxed=True)
    bob_c = await make_user("bob", relaxed=True)
    carol_c = await make_user("carol", relaxed=True)
    room = await alice.create_room("equivocation",
                                   invite=[mallory_c.user_id, bob_c.user_id, carol_c.user_id],
                                   writers=[mallory_c.user_id])
    bob = await make_client(bob_c)
    await bob.join(room)
    async with Client(hs.url, mallory_c.user_id, password=mallory_c.password) as m:
        await m.join(room)
    async with alice.open_doc(room, DOC_NAME) as da, bob.open_doc(room, DOC_NAME) as db:
        with anyio.fail_after(60):
            await da.wait_synced()
            await db.wait_synced()
        async with aiohttp.ClientSession() as http:
            for etype, content in (
                (DOC_UPDATE, {"v": 1, "doc": DOC_NAME, "update": b64(yjs_update("AAAA", 7))}),
                (DOC_SNAPSHOT, {"v": 1, "doc": DOC_NAME, "state": b64(yjs_update("BBBB", 7))}),
            ):
                status, _ = await raw_put(http, hs.url, mallory_c.access_token, room, etype,
                                          None, content)
                assert status == 200
        await until(lambda: "AAAA" in values(db.doc)["t"])
        live = values(db.doc)
    carol = await make_client(carol_c)
    await carol.join(room)
    async with carol.open_doc(room, DOC_NAME, read_only=True) as dc:
        with anyio.fail_after(60):
            await dc.wait_synced()
        assert values(dc.doc) == live


# ------------------------------------------------------------------ permissions


async def test_create_room_gives_mxsync_types_to_writers_only(hs, make_user, make_client):
    w_c = await make_user("writer", relaxed=True)
    r_c = await make_user("dashboard", relaxed=True)
    owner = await make_client(await make_user("owner", relaxed=True))
    room = await owner.create_room("perm", invite=[w_c.user_id, r_c.user_id],
                                   writers=[w_c.user_id])
    reader = await make_client(r_c)
    await reader.join(room)
    async with Client(hs.url, w_c.user_id, password=w_c.password) as writer:
        await writer.join(room)
    pl = await owner.get_state(room, "m.room.power_levels")
    assert pl is not None
    assert pl["users"].get(w_c.user_id) == 50
    assert r_c.user_id not in pl["users"] and pl.get("users_default", 0) == 0
    assert pl["events_default"] == 50 and pl["state_default"] == 50
    assert pl["events"]["m.room.power_levels"] == 100
    for etype in ALL_TYPES:
        assert pl["events"][etype] == 50, etype
    # The homeserver enforces it for every mxsync type, timeline and state alike.
    async with aiohttp.ClientSession() as http:
        for etype in ALL_TYPES:
            for key in (None, "k"):
                status, answer = await raw_put(http, hs.url, r_c.access_token, room, etype,
                                               key, {"v": 1})
                assert status == 403 and answer["errcode"] == "M_FORBIDDEN", (etype, key)
                status, _ = await raw_put(http, hs.url, w_c.access_token, room, etype, key,
                                          {"v": 1})
                assert status == 200, (etype, key)
    for etype in ALL_TYPES:
        assert await reader.may_send(room, w_c.user_id, etype)
        assert not await reader.may_send(room, r_c.user_id, etype)


async def test_a_dashboard_cannot_publish_and_gets_a_clear_error(hs, make_user, make_client,
                                                                  caplog):
    """A reader's batches, device state and document edits are refused by the
    homeserver, and the error comes out as the ForbiddenError itself, also through
    the ``async with`` blocks of the client, the publisher and the document (anyio
    would otherwise wrap it in one ExceptionGroup per block)."""
    owner_c = await make_user("owner", relaxed=True)
    dash_c = await make_user("dash", relaxed=True)
    owner = await make_client(owner_c)
    room = await owner.create_room("ro", invite=[dash_c.user_id], writers=[])
    async with Client(hs.url, dash_c.user_id, password=dash_c.password) as joiner:
        await joiner.join(room)
    async with owner.subscribe(room) as watcher, owner.open_doc(room, "notes") as od:
        with anyio.fail_after(60):
            await od.wait_synced()
        with anyio.fail_after(60), pytest.raises(ForbiddenError) as info:
            async with (
                Client(hs.url, dash_c.user_id, password=dash_c.password) as dash,
                dash.publisher(room, device="rogue", presence=True) as pub,
            ):
                pub.publish("temp", 21)
                await pub.flush()
        stats = pub.statistics()
        pending = dash.outbox.pending
        with anyio.fail_after(60), pytest.raises(ForbiddenError) as doc_info:
            async with (
                Client(hs.url, dash_c.user_id, password=dash_c.password) as dash,
                dash.open_doc(room, "notes") as sdoc,
            ):
                await sdoc.wait_synced()
                sdoc.doc.get("t", type=pycrdt.Text).insert(0, "rogue edit")
                await sdoc.flush()
        # Nothing the dashboard tried reached the owner.
        with anyio.move_on_after(1.0):
            r = await watcher.__anext__()
            pytest.fail(f"a refused reading arrived: {r}")
        assert "rogue" not in watcher.devices
        assert str(od.doc.get("t", type=pycrdt.Text)) == ""
    err = info.value
    assert err.errcode == "M_FORBIDDEN" and err.status == 403
    assert READINGS in str(err) and "M_FORBIDDEN" in str(err)  # says what and why
    assert DOC_UPDATE in str(doc_info.value)
    assert stats.failed == 1 and stats.readings_sent == 0
    assert pending == 0  # a refusal is final: nothing retries forever
    refusals = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("rogue" in msg and "refused" in msg for msg in refusals), refusals


async def test_events_from_senders_without_the_level_are_ignored_even_if_delivered(
    make_user, make_client
):
    """The homeserver would refuse them; a client must still not trust one that reached
    it (a buggy or malicious homeserver): forged events fed straight to a subscriber."""
    owner_c = await make_user("owner", relaxed=True)
    dash_c = await make_user("dash", relaxed=True)
    owner = await make_client(owner_c)
    room = await owner.create_room("forged", invite=[dash_c.user_id], writers=[])
    dash = await make_client(dash_c)
    await dash.join(room)
    now = int(time.time() * 1000)

    def forged(sender: str, etype: str, content: dict[str, Any],
               state_key: str | None = None) -> RoomEvent:
        return RoomEvent(room_id=room, event_id=f"$forged{uuid.uuid4().hex}", sender=sender,
                         type=etype, content=content, origin_server_ts=now,
                         state_key=state_key)

    async with owner.subscribe(room) as sub:
        await sub._on_event(forged(dash.user_id, READINGS, valid_batch("rogue", 0, now)))
        alive = to_content(DeviceState(online=True, since_ms=now, reason="birth"))
        await sub._on_event(forged(dash.user_id, DEVICE, alive, "rogue"))
        # The same contents from the owner (who may send them) are taken.
        await sub._on_event(forged(owner.user_id, READINGS, valid_batch("real", 0, now)))
        await sub._on_event(forged(owner.user_id, DEVICE, alive, "real"))
        with anyio.fail_after(10):
            r = await sub.__anext__()
        assert r.device == "real"
        assert "rogue" not in sub.devices and sub.devices["real"].online
        assert sub.statistics().forbidden == 1


async def test_a_document_declaration_from_a_sender_without_the_level_is_ignored(
    make_user, make_client, monkeypatch
):
    """A declaration of an unknown encoding, as if a homeserver had let a reader set
    it: the writer opening the document must not take it (it would refuse to load),
    but declare the document itself and work."""
    owner = await make_client(await make_user("owner", relaxed=True))
    reader_c = await make_user("reader", relaxed=True)
    room = await owner.create_room("forged-decl", invite=[reader_c.user_id], writers=[])
    reader = await make_client(reader_c)
    await reader.join(room)
    forged = RoomEvent(room_id=room, event_id=f"$forged{uuid.uuid4().hex}",
                       sender=reader.user_id, type=DOC, state_key="notes",
                       content={"v": 1, "encoding": "not-yjs"},
                       origin_server_ts=int(time.time() * 1000))
    real_state_event = owner.state_event

    async def state_event(room_id: str, event_type: str, state_key: str = "") -> Any:
        if event_type == DOC and state_key == "notes":
            return forged
        return await real_state_event(room_id, event_type, state_key)

    monkeypatch.setattr(owner, "state_event", state_event)
    async with owner.open_doc(room, "notes") as d:
        with anyio.fail_after(30):
            await d.wait_synced()  # would raise "uses encoding 'not-yjs'" if trusted
        d.doc.get("t", type=pycrdt.Text).insert(0, "still works")
        with anyio.fail_after(30):
            await d.flush()
    decl = await reader.get_state(room, DOC, "notes")
    assert decl is not None and decl["encoding"] != "not-yjs"


async def test_each_batch_counts_by_the_levels_in_force_where_it_stands(
    make_user, make_client
):
    """Forged events and pages (a homeserver that failed to check): a batch counts
    if its sender had the level under the newest ``m.room.power_levels`` before it,
    whatever the levels are now: live, for a subscriber following the levels in
    timeline order, and for a page of history read newest first."""
    owner = await make_client(await make_user("owner", relaxed=True))
    dash_c = await make_user("dash", relaxed=True)
    room = await owner.create_room("levels", invite=[dash_c.user_id], writers=[])
    dash = await make_client(dash_c)
    await dash.join(room)
    now = int(time.time() * 1000)
    pl = await owner.get_state(room, "m.room.power_levels")
    assert pl is not None and dash.user_id not in pl["users"]  # a reader, now and at the end
    up = {**pl, "users": {**pl["users"], dash.user_id: 50}}

    def forged(etype: str, content: dict[str, Any], sender: str = dash.user_id,
               state_key: str | None = None) -> RoomEvent:
        return RoomEvent(room_id=room, event_id=f"$forged{uuid.uuid4().hex}", sender=sender,
                         type=etype, content=content, origin_server_ts=now,
                         state_key=state_key)

    # Oldest first: before the promotion, during it, after the demotion.
    timeline = [
        forged(READINGS, valid_batch("d", 0, now)),
        forged("m.room.power_levels", up, owner.user_id, ""),
        forged(READINGS, valid_batch("d", 1, now)),
        forged("m.room.power_levels", pl, owner.user_id, ""),
        forged(READINGS, valid_batch("d", 2, now)),
    ]
    async with owner.subscribe(room) as sub:
        for ev in timeline:
            await sub._on_event(ev)
        with anyio.fail_after(10):
            got = [await sub.__anext__() for _ in range(10)]
        with anyio.move_on_after(0.5):
            r = await sub.__anext__()
            pytest.fail(f"a reading sent without the level came out: {r}")
        assert sub.statistics().forbidden == 2
    assert [r.value for r in got] == list(range(10)) and {r.device for r in got} == {"d"}
    # The same events as a page of history read backwards, from the room's start (no
    # older levels to look up: the oldest batch is judged by the current ones).
    page = MessagesPage(timeline[::-1], None, None)
    levels = await levels_backwards(dash, room, page, frozenset())
    reader = BatchReader(dash, room)
    taken = [b.seq for ev, lv in zip(page.events, levels, strict=True)
             if (b := reader.batch(ev, lv)) is not None]
    assert taken == [1] and reader.forbidden == 2


# ----------------------------------------------------------------------- secrets


async def test_no_secret_in_debug_logs_errors_or_reprs_of_documents_and_streams(
    hs, make_user, make_client, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    w_c = await make_user("secretw", relaxed=True)
    r_c = await make_user("secretr", relaxed=True)
    writer = await make_client(w_c, store=tmp_path / "w.db")
    room = await writer.create_room("secrets", invite=[r_c.user_id], writers=[])
    reader = await make_client(r_c, store=tmp_path / "r.db")
    await reader.join(room)
    texts: list[str] = []
    async with (
        writer.open_doc(room) as dw,
        reader.open_doc(room) as dr,
        reader.subscribe(room) as sub,
        writer.publisher(room, device="d") as pub,
    ):
        with anyio.fail_after(60):
            await dw.wait_synced()
            await dr.wait_synced()
        dw.doc.get("t", type=pycrdt.Text).insert(0, "x")
        pub.publish("s", 1)
        await dw.flush()
        await pub.flush()
        with anyio.fail_after(30):
            await sub.__anext__()
        # The reader's edits and readings are refused: the errors must not leak either.
        dr.doc.get("t", type=pycrdt.Text).insert(0, "y")
        with anyio.fail_after(30), pytest.raises(ForbiddenError) as doc_err:
            await dr.flush()
        texts.append(str(doc_err.value))
        texts.append(repr(doc_err.value))
        with anyio.fail_after(30), pytest.raises(ForbiddenError) as pub_err:
            async with reader.publisher(room, device="r", presence=False) as rpub:
                rpub.publish("s", 2)
        texts += [str(pub_err.value), repr(pub_err.value)]
        texts += [repr(x) for x in (dw, dr, sub, pub, rpub, writer, reader)]
        texts += [str(x.statistics()) for x in (dw, dr, sub, pub, writer, reader)]
    tokens = [writer.http.access_token, reader.http.access_token, w_c.access_token,
              r_c.access_token]
    secrets = [t for t in tokens if t] + [w_c.password, r_c.password]
    assert len(secrets) == 6
    for rec in caplog.records:
        texts.append(rec.getMessage())
        if rec.exc_info:
            texts.append(logging.Formatter().formatException(rec.exc_info))
    assert any(rec.levelno == logging.DEBUG for rec in caplog.records)  # DEBUG was on
    for text in texts:
        for secret in secrets:
            assert secret not in text, text[:300]
    # Files that hold a token or a secret are private: the stores (and their WAL
    # files) and the dev server's configuration with its shared secret.
    files = [p for p in tmp_path.iterdir() if p.name.startswith(("w.db", "r.db"))]
    files += [hs.state_dir / "homeserver.yaml", hs.state_dir / "devserver.yaml"]
    assert len(files) >= 4
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path

