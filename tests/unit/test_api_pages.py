"""Endpoints as data (protocol/api.py) and the one /messages walk (engine/pages.py)."""

from __future__ import annotations

import json

import pytest

from mxsync.engine.events import MessagesPage, RoomEvent, parse_page
from mxsync.engine.outbox import OutboxEntry
from mxsync.engine.pages import paginate
from mxsync.errors import ConfigError
from mxsync.protocol import api


def test_path_segments_are_percent_encoded_once():
    req = api.send_event("!r:x/y", "org.mxsync.doc.update", "t 1", b"{}")
    assert req.method == "PUT"
    assert req.path == ("/_matrix/client/v3/rooms/%21r%3Ax%2Fy/send/"
                        "org.mxsync.doc.update/t%201")
    assert req.body == b"{}" and req.auth
    state = api.put_state("!r:x", "org.mxsync.device", "", {"a": 1})
    assert state.path.endswith("/state/org.mxsync.device/")


def test_messages_clamps_the_limit_and_encodes_the_type_filter():
    req = api.room_messages("!r:x", None, "b", 5000, types=["a", "b"])
    assert req.query == {"dir": "b", "limit": 1000, "filter": '{"types":["a","b"]}'}
    fwd = api.room_messages("!r:x", "t1", "f", 0, filter_json="{}", to="t9")
    assert fwd.query == {"dir": "f", "limit": 1, "from": "t1", "to": "t9", "filter": "{}"}
    with pytest.raises(ValueError, match="direction"):
        api.room_messages("!r:x", None, "x", 10)  # type: ignore[arg-type]


def test_login_and_probe_are_unauthenticated_and_name_no_secret():
    login = api.login_password("@a:x", "hunter2", "DEV")
    assert not login.auth and login.body["device_id"] == "DEV"
    assert "hunter2" not in login.what and "hunter2" not in login.path
    assert not api.versions().auth


def test_delayed_state_is_a_state_put_with_the_msc4140_delay():
    req = api.delayed_state("!r:x", "org.mxsync.device", "d1", {"online": False}, 60_000)
    assert req.method == "PUT" and req.path.endswith("/state/org.mxsync.device/d1")
    assert req.query == {"org.matrix.msc4140.delay": 60_000}


def test_outbox_entry_fixes_its_txn_id_and_builds_its_request():
    entry = OutboxEntry.new("!r:x", "org.mxsync.readings", {"v": 1}, lane="d1")
    assert json.loads(entry.content) == {"v": 1} and entry.txn_id.startswith("mxs")
    assert entry.request().path.endswith(f"/send/org.mxsync.readings/{entry.txn_id}")
    state = OutboxEntry.new("!r:x", "org.mxsync.sensor", b"{}", state_key="t")
    assert state.request().path.endswith("/state/org.mxsync.sensor/t")
    assert OutboxEntry.new("!r:x", "t", {}).txn_id != entry.txn_id
    with pytest.raises(ConfigError, match="not a room id"):
        OutboxEntry.new("#alias:x", "t", {})


def _ev(i: int) -> RoomEvent:
    return RoomEvent(room_id="!r:x", event_id=f"$e{i}", sender="@a:x", type="t", content={})


@pytest.mark.anyio
async def test_paginate_goes_on_over_empty_pages_and_stops_when_the_token_stops():
    pages = {
        None: MessagesPage([_ev(1), _ev(2)], None, "t1"),
        "t1": MessagesPage([], "t1", "t2"),  # filtered out: not the end
        "t2": MessagesPage([_ev(3)], "t2", "t2"),  # an end that does not move: the end
    }
    asked: list[str | None] = []

    async def fetch(token: str | None) -> MessagesPage:
        asked.append(token)
        return pages[token]

    got = [page async for page in paginate(fetch, None)]
    assert asked == [None, "t1", "t2"]
    assert [ev.event_id for p in got for ev in p.events] == ["$e1", "$e2", "$e3"]


@pytest.mark.anyio
async def test_paginate_stops_without_an_end_token():
    async def fetch(token: str | None) -> MessagesPage:
        assert token == "t0"
        return MessagesPage([_ev(1)], "t0", None)

    assert len([p async for p in paginate(fetch, "t0")]) == 1


def test_parse_page_skips_malformed_events_and_bad_tokens():
    page = parse_page("!r:x", {
        "chunk": [{"event_id": "$1", "sender": "@a:x", "type": "t", "content": {}},
                  {"event_id": 5}, "garbage"],
        "start": "s", "end": 7,
    })
    assert [ev.event_id for ev in page.events] == ["$1"]
    assert (page.start, page.end) == ("s", None)


def test_join_over_federation_names_each_server_once_as_server_name():
    from urllib.parse import urlencode

    req = api.join("!room:hs1", ["127.0.0.1:8448", "hs2"])
    assert req.method == "POST" and req.path == "/_matrix/client/v3/join/%21room%3Ahs1"
    assert req.query == {"server_name": ["127.0.0.1:8448", "hs2"]}
    # As Http sends it: one repeated parameter per server.
    assert urlencode(req.query, doseq=True) == "server_name=127.0.0.1%3A8448&server_name=hs2"
    assert api.join("#a:hs1").query is None
