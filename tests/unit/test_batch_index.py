"""The batch index's tables (streams/index.py): rows per batch and sensor, queries by
reading time, pruning by retention, the frontier; and the durable position's table."""

from __future__ import annotations

import sqlite3

from mxsync.engine.events import RoomEvent
from mxsync.protocol.readings import Reading
from mxsync.streams import durable
from mxsync.streams import index as idx


def ev(event_id: str, ts: int = 5) -> RoomEvent:
    return RoomEvent(room_id="!r", event_id=event_id, sender="@d:x", type="org.mxsync.readings",
                     content={}, origin_server_ts=ts)


def test_rows_span_each_sensor_and_queries_find_batches_by_reading_time() -> None:
    conn = sqlite3.connect(":memory:")
    idx.create_tables(conn)
    readings = [Reading("a", 100, 1), Reading("b", 50, 2), Reading("a", 300, 3),
                Reading("a", 200, 4)]
    rows = idx.rows_of(ev("$1"), "dev", 7, 3, readings)
    assert sorted((r[2], r[3], r[4]) for r in rows) == [("a", 100, 300), ("b", 50, 50)]
    idx._insert(conn, rows)
    idx._insert(conn, rows)  # a batch noted twice (live and walk) is one row per sensor
    idx._insert(conn, idx.rows_of(ev("$2", ts=9), "dev", 7, 4, [Reading("a", 10_000, 5)]))
    assert [h[0] for h in idx._query(conn, "!r", "a", 300, 301)] == ["$1"]  # t_max included
    assert idx._query(conn, "!r", "a", 301, 9_999) == []
    assert idx._query(conn, "!r", "a", 0, 100) == []  # end excluded
    assert [h[0] for h in idx._query(conn, "!r", "a", 0, 20_000)] == ["$1", "$2"]
    assert [h[4] for h in idx._query(conn, "!r", "b", 0, 20_000)] == [3]
    assert idx._query(conn, "!other", "a", 0, 20_000) == []
    idx._prune(conn, "!r", 1_000)
    assert [h[0] for h in idx._query(conn, "!r", "a", 0, 20_000)] == ["$2"]


def test_the_frontier_and_the_durable_position_survive_in_their_tables() -> None:
    conn = sqlite3.connect(":memory:")
    idx.create_tables(conn)
    assert idx._frontier(conn, "!r") is None
    idx._set_frontier(conn, "!r", "$a")
    idx._set_frontier(conn, "!r", "$b")
    assert idx._frontier(conn, "!r") == "$b"
    assert durable.load(conn, "!r", "sink") is None
    durable.save(conn, "!r", "sink", durable.Position("$e", 3))
    durable.save(conn, "!r", "sink", durable.Position("$f", 0))
    durable.save(conn, "!r", "other", durable.Position("$e", 1))
    assert durable.load(conn, "!r", "sink") == durable.Position("$f", 0)
    assert durable.load(conn, "!r", "other") == durable.Position("$e", 1)
