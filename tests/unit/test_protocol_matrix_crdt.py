"""The Matrix-CRDT 0.2 wire format (mxsync.protocol.matrix_crdt), without a server."""

from __future__ import annotations

import pytest

from mxsync.errors import ProtocolError
from mxsync.protocol import matrix_crdt as wire


def test_the_backward_collector_stops_at_the_snapshots_last_event_id():
    c = wire.BackwardCollector()
    upd = wire.encode_update(b"\x00\x00")
    c.see("$4", wire.MCRDT_UPDATE, upd)
    c.see("$3", wire.MCRDT_SNAPSHOT, wire.encode_snapshot(b"\x00\x00", "$2"))
    c.see("$2b", wire.MCRDT_UPDATE, {"update": "not base64!"})
    c.see("$2", wire.MCRDT_UPDATE, upd)
    c.see("$1", wire.MCRDT_UPDATE, upd)
    assert c.done and c.skipped == 1 and c.since_snapshot == 1
    assert [eid for eid, _t, _d in c.forward()] == ["$3", "$4"]


def test_contents_are_matrix_crdts():
    assert wire.encode_update(b"\x01\x02") == {"update": "AQI="}
    assert wire.encode_snapshot(b"\x01", "$e") == {"update": "AQ==", "last_event_id": "$e"}
    assert wire.decode(wire.MCRDT_UPDATE, {"update": "AQI"}) == wire.McrdtUpdate(b"\x01\x02")
    snap = wire.decode(wire.MCRDT_SNAPSHOT, {"update": "AQ==", "last_event_id": "$e"})
    assert snap == wire.McrdtSnapshot(b"\x01", "$e")


@pytest.mark.parametrize(("etype", "content"), [
    (wire.MCRDT_UPDATE, {}),
    (wire.MCRDT_UPDATE, {"update": ""}),
    (wire.MCRDT_UPDATE, {"update": 5}),
    (wire.MCRDT_UPDATE, "nope"),
    (wire.MCRDT_SNAPSHOT, {"update": "AQ=="}),
    (wire.MCRDT_SNAPSHOT, {"update": "AQ==", "last_event_id": "e"}),
    ("m.room.message", {"update": "AQ=="}),
])
def test_malformed_contents_are_refused(etype, content):
    with pytest.raises(ProtocolError):
        wire.decode(etype, content)


def test_the_client_whose_own_update_is_the_30th_posts_the_snapshot():
    me = wire.SnapshotCounter("@me:x")
    due = [me.see_update("@other:x" if n % 7 == 0 else "@me:x") for n in range(1, 91)]
    # Every 30th update (30, 60, 90; none a multiple of 7) is its own.
    assert [n for n, d in zip(range(1, 91), due, strict=True) if d] == [30, 60, 90]
    mixed = wire.SnapshotCounter("@me:x")
    flags = [mixed.see_update("@other:x" if n == 60 else "@me:x") for n in range(1, 61)]
    assert [n for n, d in zip(range(1, 61), flags, strict=True) if d] == [30]
    other = wire.SnapshotCounter("@me:x")
    assert not any(other.see_update("@other:x") for _ in range(30))
    other.see_snapshot()
    assert other.since == 0
