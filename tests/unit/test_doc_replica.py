"""The document replica as a state machine: no server, no event loop."""

from __future__ import annotations

import random
import string
from typing import Any

import pycrdt

from mxsync.docs.replica import REMOTE, Replica
from mxsync.engine.events import RoomEvent
from mxsync.protocol import docs as proto
from mxsync.protocol.types import DOC_UPDATE

ROOM = "!room:example.org"
WRITER = "@writer:example.org"


def make_replica() -> Replica:
    return Replica("notes", policy=proto.SnapshotPolicy("@reader:example.org|DEV"),
                   room_id=ROOM, user_id="@reader:example.org")


def update_events(content_list: list[dict[str, Any]], first: int, sender: str = WRITER
                  ) -> list[RoomEvent]:
    return [RoomEvent(room_id=ROOM, event_id=f"${first + i}", sender=sender, type=DOC_UPDATE,
                      content=c) for i, c in enumerate(content_list)]


def three_edits() -> tuple[pycrdt.Doc[Any], list[bytes]]:
    """A writer's document and the update of each of three consecutive edits."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    text = doc.get("t", type=pycrdt.Text)
    updates = []
    for word in ("one ", "two ", "three"):
        before = doc.get_state()
        text += word
        updates.append(doc.get_update(before))
    return doc, updates


def text_of(replica: Replica) -> str:
    return str(replica.doc.get("t", type=pycrdt.Text))


def test_out_of_order_update_waits_then_applies_when_its_dependencies_arrive() -> None:
    _, updates = three_edits()
    events = [update_events(proto.encode_update("notes", u), i)[0]
              for i, u in enumerate(updates)]
    replica = make_replica()
    replica.process(events[2], live=False)
    assert replica.pending == 1 and text_of(replica) == ""
    replica.process(events[0], live=False)
    assert text_of(replica) == "one "
    replica.process(events[1], live=False)
    assert replica.pending == 0
    assert text_of(replica) == "one two three"
    assert replica.counts["updates_applied"] == 3 and replica.counts["skipped"] == 0
    # Nothing waits any more: a cache may resume from the last event read.
    assert replica.resume_position() == replica.position == events[1].event_id


def test_resume_position_stays_before_a_pending_update() -> None:
    _, updates = three_edits()
    events = [update_events(proto.encode_update("notes", u), i)[0]
              for i, u in enumerate(updates)]
    replica = make_replica()
    replica.process(events[0], live=False)
    replica.process(events[2], live=False)  # waits for the second edit
    assert replica.position == events[2].event_id
    assert replica.resume_position() == events[0].event_id
    assert replica.snapshot_covers() == events[0].event_id


def test_duplicate_event_is_ignored() -> None:
    _, updates = three_edits()
    ev = update_events(proto.encode_update("notes", updates[0]), 0)[0]
    replica = make_replica()
    replica.process(ev, live=False)
    replica.process(ev, live=True)
    assert text_of(replica) == "one "
    assert replica.counts["duplicates"] == 1 and replica.counts["updates_applied"] == 1


def test_update_from_a_sender_without_the_power_level_is_skipped() -> None:
    _, updates = three_edits()
    replica = make_replica()
    replica.safe_process(RoomEvent(
        room_id=ROOM, event_id="$pl", sender="@admin:example.org",
        type="m.room.power_levels", state_key="",
        content={"users": {"@admin:example.org": 100}, "events": {DOC_UPDATE: 50}}),
        live=False)
    ev = update_events(proto.encode_update("notes", updates[0]), 0)[0]
    replica.safe_process(ev, live=False)
    assert text_of(replica) == ""
    assert replica.counts["forbidden"] == 1 and replica.counts["skipped"] == 1
    assert replica.counts["updates_applied"] == 0


def test_chunked_update_is_applied_once_every_chunk_is_in() -> None:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    rng = random.Random(7)
    big = "".join(rng.choice(string.ascii_letters) for _ in range(150_000))
    doc.get("t", type=pycrdt.Text).insert(0, big)
    chunks = proto.encode_update("notes", doc.get_update(), chunk_id="set1")
    assert len(chunks) >= 3
    events = update_events(chunks, 0)
    replica = make_replica()
    for ev in events[:-1]:
        replica.process(ev, live=False)
        assert text_of(replica) == ""
    assert replica.asm.pending_sets == 1
    assert replica.incomplete_sets() == [(WRITER, "set1", events[0].event_id)]
    # An incomplete set keeps the resume position before its first chunk.
    assert replica.resume_position() is None
    replica.process(events[-1], live=False)
    assert text_of(replica) == big
    assert replica.asm.statistics().completed == 1 and replica.asm.pending_sets == 0
    assert replica.counts["updates_applied"] == 1


def test_remote_updates_are_applied_with_the_remote_origin() -> None:
    _, updates = three_edits()
    replica = make_replica()
    origins: list[Any] = []
    sub = replica.doc.observe(lambda e: origins.append(e.transaction.origin()))
    replica.process(update_events(proto.encode_update("notes", updates[0]), 0)[0], live=False)
    replica.doc.unobserve(sub)
    assert origins == [hash(REMOTE)]


def test_own_echo_is_not_applied_again() -> None:
    _, updates = three_edits()
    ev = update_events(proto.encode_update("notes", updates[0]), 0)[0]
    echo = RoomEvent(room_id=ROOM, event_id=ev.event_id, sender=ev.sender, type=ev.type,
                     content=ev.content, txn_id="txn1")
    replica = make_replica()
    replica.process(echo, live=True)
    assert text_of(replica) == ""
    assert replica.counts["own_echoes"] == 1 and replica.counts["updates_applied"] == 0
