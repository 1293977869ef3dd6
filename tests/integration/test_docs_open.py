"""Opening documents against a real Synapse: the declaration of a new document
is sent once however many members open it at once, and an open right after a
snapshot reads one small page of history.

Every wait has a deadline; users are relaxed (no message rate limit).
"""

from __future__ import annotations

import string
from typing import Any

import anyio
import pycrdt
import pytest

from mxsync import Client, OutgoingEvent
from mxsync.protocol import docs as proto
from mxsync.protocol.types import DOC, DOC_UPDATE

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

    async with f2.open_doc(room, "h") as d2:
        with anyio.fail_after(60):
            await d2.wait_synced()
        assert str(d2.doc.get("t", type=pycrdt.Text)) == str(xt)
        st = d2.statistics()
    # One page of 16: the snapshot, its covers and the updates that prove it.
    assert st.snapshots_applied == 1, st
    assert st.load_pages == 1 and st.load_events <= 16, st
