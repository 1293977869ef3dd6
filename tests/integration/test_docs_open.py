"""Opening documents against a real Synapse: the declaration of a new document
is sent once however many members open it at once; an open right after a
snapshot makes one request, a page of 16 events, before its text is there;
the declaration's checks that do take requests run beside that page; a client
restarted from a saved since-token reads the room's state before trusting it.

Requests are counted with ``Http.recording`` (their number, never their time).
Every wait has a deadline; users are relaxed (no message rate limit).
"""

from __future__ import annotations

import string
import time
from typing import Any

import anyio
import pycrdt
import pytest

from mxsync import Client, OutgoingEvent
from mxsync.engine.http import RequestRecord
from mxsync.protocol import docs as proto
from mxsync.protocol.types import DOC, DOC_UPDATE, POWER_LEVELS

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


async def _room(make_user, make_client, n: int, **kw: Any) -> tuple[str, list[Client]]:
    creds = [await make_user(f"o{i}", relaxed=True) for i in range(n)]
    first = await make_client(creds[0], **kw)
    room = await first.create_room("open", invite=[c.user_id for c in creds[1:]])
    clients = [first]
    for c in creds[1:]:
        client = await make_client(c, **kw)
        await client.join(room)
        clients.append(client)
    return room, clients


async def _declarations(client: Client, room: str, name: str) -> list[str]:
    """Senders of every ``org.mxsync.doc`` state event for ``name`` in the timeline."""
    senders = []
    async for page in client.pages(room, None, direction="b", limit=100, types=[DOC]):
        senders += [ev.sender for ev in page.events if ev.state_key == name]
        if not page.events:
            break
    return senders


async def test_members_opening_a_new_document_at_once_declare_it_once(make_user, make_client):
    room, (a, b, c) = await _room(make_user, make_client, 3)
    texts: dict[str, str] = {}

    async def open_and_type(client: Client, tag: str) -> None:
        async with client.open_doc(room, "fresh") as sdoc:
            with anyio.fail_after(60):
                await sdoc.wait_synced()
            sdoc.doc.get("t", type=pycrdt.Text).insert(0, tag)
            with anyio.fail_after(60):
                await sdoc.flush()
            texts[tag] = ""

    # Two open at the same moment; the third right after the first returned.
    async with anyio.create_task_group() as tg:
        tg.start_soon(open_and_type, a, "a")
        tg.start_soon(open_and_type, b, "b")
    await open_and_type(c, "c")
    with anyio.fail_after(30):
        senders = await _declarations(c, room, "fresh")
    assert len(senders) == 1, senders
    assert set(texts) == {"a", "b", "c"}

    # And all three see one document with the three edits.
    async with a.open_doc(room, "fresh") as sdoc:
        with anyio.fail_after(60):
            await sdoc.wait_synced()
            t = sdoc.doc.get("t", type=pycrdt.Text)
            while sorted(str(t)) != ["a", "b", "c"]:  # noqa: ASYNC110 - a document, polled
                await anyio.sleep(0.02)


def _made(records: list[RequestRecord], since: float, until: float) -> list[RequestRecord]:
    """The requests that started and ended within [since, until], the sync loop's aside."""
    return [r for r in records if r.started >= since and r.ended <= until
            and not r.path.endswith("/sync")]


def _describe(records: list[RequestRecord]) -> list[str]:
    return [f"{r.method} {r.path.rsplit('/', 1)[-1]} {r.query.get('filter', '')[:60]}"
            for r in records]


async def _open_recorded(client: Client, room: str, name: str
                         ) -> tuple[str, list[RequestRecord], Any]:
    """Open ``name``: its text, the requests made until it was there, its statistics."""
    with client.http.recording() as records:
        since = time.perf_counter()
        async with client.open_doc(room, name) as sdoc:
            with anyio.fail_after(60):
                await sdoc.wait_synced()
            until = time.perf_counter()
            text, st = str(sdoc.doc.get("t", type=pycrdt.Text)), sdoc.statistics()
    return text, _made(records, since, until), st


async def test_open_right_after_a_snapshot_reads_one_small_page(make_user, make_client):
    room, (x, f1, f2) = await _room(make_user, make_client, 3, sends_per_room=8)
    xdoc: pycrdt.Doc = pycrdt.Doc()
    xt = xdoc.get("t", type=pycrdt.Text)
    updates: list[bytes] = []
    xdoc.observe(lambda e: updates.append(e.update))
    for i in range(300):
        xt.insert(len(xt) // 2 if i % 3 else len(xt), string.ascii_letters[i % 52])
    await (await x.send(room, DOC, proto.encode_declaration(), state_key="h")).wait()
    handles = await x.send_many([
        OutgoingEvent(room, DOC_UPDATE, proto.encode_update("h", u)[0], lane=f"l{i % 8}")
        for i, u in enumerate(updates)
    ])
    with anyio.fail_after(120):
        for h in handles:
            await h.wait()

    # The first opener replays all 300 and then posts a snapshot (the policy).
    async with f1.open_doc(room, "h") as d1:
        with anyio.fail_after(60):
            await d1.wait_synced()
            while d1.statistics().snapshots_sent < 1 or d1.statistics().in_flight:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        assert d1.statistics().load_events >= 300

    text, made, st = await _open_recorded(f2, room, "h")
    assert text == str(xt)
    # One page of 16: the snapshot, its covers and the updates that prove it.
    assert st.snapshots_applied == 1, st
    assert st.load_pages == 1 and st.load_events <= 16, st
    # And that page is the only request before the text is there: the room's
    # state came with f2's sync (it joined after its first one), the creator's
    # declaration needs no past power levels, the hello waits for the load.
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in made] == [("GET", "messages")], \
        _describe(made)


async def test_the_declarations_checks_run_beside_the_first_page(make_user, make_client):
    # Declared by a writer who is not the room's creator: judging it lists the
    # room's past power levels, which must not delay the first page.
    room, (x, w, f) = await _room(make_user, make_client, 3)
    async with w.open_doc(room, "n") as dw:
        with anyio.fail_after(60):
            await dw.wait_synced()
        dw.doc.get("t", type=pycrdt.Text).insert(0, "by a writer")
        with anyio.fail_after(60):
            await dw.flush()

    text, made, _ = await _open_recorded(f, room, "n")
    assert text == "by a writer"
    # The first page is read from the room's end (no ``from``); with no snapshot,
    # the next ones follow it.
    page = [r for r in made if r.path.endswith("/messages") and DOC_UPDATE in r.query["filter"]
            and "from" not in r.query]
    levels = [r for r in made if r.path.endswith("/messages")
              and POWER_LEVELS in r.query["filter"] and DOC_UPDATE not in r.query["filter"]]
    assert len(page) == 1 and levels, _describe(made)
    # The page was asked for before the first answer about the levels came.
    assert page[0].started < min(r.ended for r in levels), _describe(made)
    assert not [r for r in made if r.path.endswith("/state")], _describe(made)


async def test_a_restarted_client_reads_the_state_before_trusting_it(
        make_user, make_client, hs, tmp_path):
    # A run that starts from a saved since-token gets only changes from /sync:
    # its state cache is not the room's state, so the open asks the server.
    room, (x,) = await _room(make_user, make_client, 1)
    rc = await make_user("r", relaxed=True)
    await x.invite(room, rc.user_id)
    store = tmp_path / "restarted.db"
    async with Client(hs.url, rc.user_id, password=rc.password, store_path=store) as r:
        await r.join(room)
        with anyio.fail_after(30):
            while room not in r.sync.state:  # noqa: ASYNC110 - the join's sync, polled
                await anyio.sleep(0.02)
    async with x.open_doc(room, "r") as dx:
        with anyio.fail_after(60):
            await dx.wait_synced()
        dx.doc.get("t", type=pycrdt.Text).insert(0, "declared while r was away")
        with anyio.fail_after(60):
            await dx.flush()

    async with Client(hs.url, rc.user_id, password=rc.password, store_path=store) as r:
        with anyio.fail_after(30):
            await r.wait_synced()
        text, made, _ = await _open_recorded(r, room, "r")
    assert text == "declared while r was away"
    assert [r for r in made if r.path.endswith("/state")], _describe(made)
    with anyio.fail_after(30):
        assert len(await _declarations(x, room, "r")) == 1
