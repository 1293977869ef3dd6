"""Documents across concurrent branches, with no server: a snapshot judged by its
content (not its position in the timeline), holes repaired by looking back, and
the writer told when a concurrent branch was merged."""

from __future__ import annotations

from typing import Any

import pycrdt

from mxsync.docs.coldscan import BackwardScan
from mxsync.docs.replica import Replica
from mxsync.engine.events import RoomEvent
from mxsync.protocol import docs as proto
from mxsync.protocol.types import DOC_SNAPSHOT, DOC_UPDATE

ROOM = "!room:hs1"
A, B = "@a:hs1", "@b:hs2"


def replica() -> Replica:
    return Replica("d", policy=proto.SnapshotPolicy("@reader:hs1|DEV"), room_id=ROOM)


def event(eid: str, etype: str, content: dict[str, Any], sender: str = A,
          ts: int = 0) -> RoomEvent:
    return RoomEvent(room_id=ROOM, event_id=f"${eid}", sender=sender, type=etype,
                     content=content, origin_server_ts=ts)


def update_event(eid: str, update: bytes, sender: str = A, ts: int = 0) -> RoomEvent:
    (content,) = proto.encode_update("d", update)
    return event(eid, DOC_UPDATE, content, sender, ts)


def edit(doc: pycrdt.Doc[Any], fn: Any) -> bytes:
    before = doc.get_state()
    fn(doc)
    return doc.get_update(before)


def content(doc: pycrdt.Doc[Any]) -> tuple[str, dict[str, Any]]:
    return str(doc.get("t", type=pycrdt.Text)), dict(doc.get("m", type=pycrdt.Map).to_py())


def branches(n: int, n_b: int | None = None
             ) -> tuple[list[RoomEvent], pycrdt.Doc[Any], pycrdt.Doc[Any]]:
    """A common base, then ``n`` edits on A's side and ``n_b`` (default ``n``) on
    B's made apart (a partition), as the receiving server orders them: by
    depth, the two sides interleaved, A's surplus above."""
    n_b = n if n_b is None else n_b
    a: pycrdt.Doc[Any] = pycrdt.Doc()
    a.get("t", type=pycrdt.Text)
    a.get("m", type=pycrdt.Map)
    base_updates = [edit(a, lambda d: d.get("t", type=pycrdt.Text).insert(0, "base ")),
                    edit(a, lambda d: d.get("m", type=pycrdt.Map).update({"x": 1, "y": 2}))]
    b: pycrdt.Doc[Any] = pycrdt.Doc()
    for u in base_updates:
        b.apply_update(u)
    timeline = [update_event(f"base{i}", u) for i, u in enumerate(base_updates)]
    # Quiet history before the fork (what a cold open reads past).
    for i in range(70):
        u = edit(a, lambda d, i=i: d.get("m", type=pycrdt.Map).__setitem__(f"old{i}", i))
        b.apply_update(u)
        # Before the fork both sides wrote (the sender is what the scan reads).
        timeline.append(update_event(f"old{i}", u, sender=A if i % 2 else B))
    for i in range(max(n, n_b)):
        if i < n:
            ua = edit(a, lambda d, i=i: d.get("t", type=pycrdt.Text).insert(0, f"a{i} "))
            timeline.append(update_event(f"a{i}", ua))
        if i < n_b:
            ub = edit(b, lambda d, i=i: d.get("t", type=pycrdt.Text).insert(
                len(str(d.get("t", type=pycrdt.Text))), f"b{i} "))
            timeline.append(update_event(f"b{i}", ub, sender=B))
    # Set against delete: B deletes the key A sets again, and a key A never touches.
    ub = edit(b, lambda d: d.get("m", type=pycrdt.Map).pop("y"))
    ua = edit(a, lambda d: d.get("m", type=pycrdt.Map).__setitem__("x", 10))
    timeline += [update_event("bdel", ub, sender=B), update_event("aset", ua)]
    return timeline, a, b


def open_cold(window_oldest_first: list[RoomEvent], servers: frozenset[str] | None = None
              ) -> tuple[Replica, BackwardScan]:
    """What Loader._cold_open does, without the network: scan newest first until
    done, then the snapshot and every event read, oldest first."""
    scan = BackwardScan("d", servers=servers)
    window: list[RoomEvent] = []
    for ev in reversed(window_oldest_first):
        window.append(ev)
        scan.see(ev, len(window) - 1)
        if scan.done():
            break
    rep = replica()
    forward = window[::-1]
    covers_at = -1
    assert scan.snapshot is not None and scan.covers_index is not None
    covers_at = len(forward) - 1 - scan.covers_index
    rep.apply_base(scan.snapshot)
    for i, ev in enumerate(forward):
        rep.safe_process(ev, live=False, covered=i <= covers_at)
    return rep, scan


def test_a_snapshot_of_one_side_does_not_hide_the_other_sides_edits_sorted_before_it():
    timeline, a, b = branches(40)
    # A snapshots on its side during the partition: covers its last event.
    (snap,) = proto.encode_snapshot("d", a.get_update(), a.get_state(), "$aset")
    timeline.append(event("snap", DOC_SNAPSHOT, snap))
    rep, scan = open_cold(timeline)
    merged: pycrdt.Doc[Any] = pycrdt.Doc()
    merged.apply_update(a.get_update())
    merged.apply_update(b.get_update())
    assert content(rep.doc) == content(merged)
    assert "y" not in content(rep.doc)[1]  # B's delete, positioned before covers
    # B's 40 inserts show in the state vector; deletions (B's, and A's overwrite
    # of "x") only in the content, so those updates are applied too (no-ops for A's).
    assert scan.uncovered == 40 and rep.counts["uncovered"] == 42
    assert scan.reached == {"hs1", "hs2"}
    # It read past the fork into the quiet history, and stopped there.
    assert scan.quiet >= 64 and len(timeline) - 1 - scan.snapshot_index < len(timeline)


def test_a_snapshot_on_a_line_opens_as_before():
    timeline, a, _ = branches(5, 0)
    line = [ev for ev in timeline if ev.event_id != "$bdel"]  # no other branch at all
    (snap,) = proto.encode_snapshot("d", a.get_update(), a.get_state(), "$aset")
    rep, scan = open_cold([*line, event("snap", DOC_SNAPSHOT, snap)])
    assert scan.uncovered == 0
    assert rep.counts["uncovered"] == 1  # A's overwrite deletes: applied, a no-op
    assert content(rep.doc) == content(a)
    assert 64 <= scan.quiet and scan.past_covers < len(line)  # read a bounded way back


def test_a_hole_is_repaired_from_events_found_looking_back_without_moving_the_position():
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    text = doc.get("t", type=pycrdt.Text)
    updates = [edit(doc, lambda d, w=w: text.__iadd__(w)) for w in ("one ", "two ", "three")]
    rep = replica()
    rep.process(update_event("e0", updates[0]), live=False)
    rep.process(update_event("e2", updates[2]), live=False)
    assert rep.pending == 1 and rep.position == "$e2"
    found = update_event("e1", updates[1])
    assert rep.repair(found)
    assert rep.pending == 0 and str(rep.doc.get("t", type=pycrdt.Text)) == "one two three"
    assert rep.position == "$e2" and rep.counts["repaired"] == 1
    assert not rep.repair(found)  # once
    assert not rep.repair(update_event("e0again", updates[0]))  # nothing it lacks


def test_merging_an_update_older_than_the_newest_snapshot_and_not_in_it_is_reported():
    timeline, a, b = branches(3)
    rep = replica()
    told: list[int] = []
    rep.on_concurrent = lambda: told.append(1)
    for ev in timeline:
        if ev.sender == A:
            rep.process(ev, live=False)
    (snap,) = proto.encode_snapshot("d", a.get_update(), a.get_state(), "$aset")
    rep.process(event("snap", DOC_SNAPSHOT, snap, ts=100_000), live=False)
    # B's edits, made during the partition (long before the snapshot), arrive now.
    for ev in timeline:
        if ev.sender == B:
            rep.process(RoomEvent(**{**{f: getattr(ev, f) for f in ev.__struct_fields__},
                                     "event_id": ev.event_id + "x", "origin_server_ts": 1}),
                        live=False)
    assert told and rep.counts["concurrent_merges"] == len(told)
    # A fresh update (made after the snapshot) is not a concurrent branch.
    n = len(told)
    u = edit(a, lambda d: d.get("t", type=pycrdt.Text).insert(0, "new "))
    rep.process(update_event("fresh", u, ts=200_000), live=False)
    assert len(told) == n


def test_a_short_branch_below_a_long_one_sided_run_is_found_by_server():
    """A made 150 edits during the partition, B 10: above B's, 140 of A's have
    no counterpart at their depth, a long run the snapshot contains. Reading on
    until a contained update of each writer's server (B's from before the fork)
    finds B's branch; the run alone would stop above it."""
    timeline, a, b = branches(150, 10)
    (snap,) = proto.encode_snapshot("d", a.get_update(), a.get_state(), "$aset")
    timeline.append(event("snap", DOC_SNAPSHOT, snap))
    merged: pycrdt.Doc[Any] = pycrdt.Doc()
    merged.apply_update(a.get_update())
    merged.apply_update(b.get_update())
    rep, scan = open_cold(timeline, servers=frozenset({"hs1", "hs2"}))
    assert content(rep.doc) == content(merged) and scan.uncovered == 10
    blind, _ = open_cold(timeline)  # anyone may write: no servers to wait for
    assert content(blind.doc) != content(merged)  # the known limit (PROTOCOL.md)
