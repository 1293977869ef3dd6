"""Pure parts of the engine: backoff bounds, event parsing, power-level rules."""

from __future__ import annotations

import pytest

from mxsync.engine.events import RoomEvent, parse_event, power_level_allows, room_creators
from mxsync.engine.http import Backoff


def test_backoff_grows_is_capped_and_never_zero():
    b = Backoff(base=0.5, cap=8.0)
    delays = [b.next_delay() for _ in range(12)]
    assert all(d > 0 for d in delays)
    assert delays[0] <= 0.5
    assert max(delays) <= 8.0
    assert min(delays[6:]) >= 4.0  # at the cap, jitter keeps at least half
    b.reset()
    assert b.next_delay() <= 0.5


@pytest.mark.parametrize("bad", [(0, 1, 2), (1, 0.5, 2), (1, 2, 0.5)])
def test_backoff_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        Backoff(*bad)


def test_parse_event_refuses_what_is_not_an_event():
    good = {"event_id": "$e", "sender": "@a:x", "type": "t", "content": {}, "origin_server_ts": 5,
            "unsigned": {"transaction_id": "tx1"}}
    ev = parse_event("!r:x", good)
    assert ev == RoomEvent(room_id="!r:x", event_id="$e", sender="@a:x", type="t", content={},
                           origin_server_ts=5, txn_id="tx1")
    for broken in ({**good, "event_id": 3}, {**good, "content": []}, {**good, "state_key": 1},
                   {k: v for k, v in good.items() if k != "sender"}, "nope", None):
        assert parse_event("!r:x", broken) is None
    assert parse_event("!r:x", {**good, "origin_server_ts": True}).origin_server_ts == 0


PL = {"users": {"@w:x": 50, "@admin:x": 100}, "users_default": 0, "events_default": 50,
      "state_default": 50, "events": {"org.mxsync.readings": 50, "m.room.power_levels": 100}}


def test_power_levels_writer_reader_and_defaults():
    assert power_level_allows(PL, "@w:x", "org.mxsync.readings", state=False)
    assert not power_level_allows(PL, "@reader:x", "org.mxsync.readings", state=False)
    assert not power_level_allows(PL, "@reader:x", "org.mxsync.other", state=False)
    assert not power_level_allows(PL, "@w:x", "m.room.power_levels", state=True)
    assert power_level_allows(PL, "@admin:x", "m.room.power_levels", state=True)
    # No power levels at all: the spec's defaults (anyone may send).
    assert power_level_allows(None, "@anyone:x", "org.mxsync.readings", state=False)
    # Garbage levels do not crash and do not grant.
    weird = {"users": {"@w:x": "high"}, "events": "nope", "events_default": "50"}
    assert not power_level_allows(weird, "@w:x", "org.mxsync.readings", state=False)


def test_room_v12_creators_outrank_levels_older_versions_do_not():
    def create(version: str, extra=None) -> RoomEvent:
        content = {"room_version": version}
        if extra is not None:
            content["additional_creators"] = extra
        return RoomEvent(room_id="!r", event_id="$c", sender="@c:x", type="m.room.create",
                         content=content, state_key="")

    assert room_creators(create("12", ["@d:x", 5])) == {"@c:x", "@d:x"}
    assert room_creators(create("10")) == frozenset()
    assert power_level_allows(PL, "@c:x", "org.mxsync.readings", state=False,
                              creators=room_creators(create("12")))
