"""The appservice's transaction endpoint (fleet/transactions.py) on its own: its
HTTP answers, the hs_token check, txn-id idempotency kept in a real store, bad
input; and the sync loop's ``push``, which hands pushed events to consumers.

The consumer side is a small recorder standing in for the client's dispatch
(the real path, Synapse included, is tests/integration/test_fleet_commands.py).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import anyio
import pytest

from mxsync.engine.events import RoomEvent
from mxsync.engine.store import Store
from mxsync.engine.sync import SyncLoop
from mxsync.errors import ConfigError
from mxsync.fleet.appservice import Registration
from mxsync.fleet.transactions import TransactionEndpoint, listen_address
from mxsync.protocol import api

pytestmark = pytest.mark.anyio

T = TypeVar("T")
TOKEN = "hs-secret"


class Recorder:
    """Takes pushed events like Connection.push_events; a real store for run_sql."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pushed: list[list[str]] = []
        self.gate: anyio.Event | None = None
        self.seen: set[str] = set()

    async def push_events(self, events: Iterable[RoomEvent]) -> int:
        if self.gate is not None:
            await self.gate.wait()
        evs = list(events)
        self.pushed.append([ev.event_id for ev in evs])
        new = [ev for ev in evs if ev.event_id not in self.seen]
        self.seen |= {ev.event_id for ev in new}
        return len(new)

    async def run_sql(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.store.run(fn)

    async def request(self, req: api.Request) -> dict[str, Any]:
        raise AssertionError("no request expected")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "gw.db")
    await s.open()
    yield s
    await s.close()


def ev(n: int, room: str = "!r:hs", etype: str = "org.mxsync.command") -> dict[str, Any]:
    return {"room_id": room, "event_id": f"$e{n}", "sender": "@op:hs", "type": etype,
            "origin_server_ts": 1000 + n, "content": {"n": n}}


async def call(endpoint: TransactionEndpoint, method: str, path: str, *, body: Any = None,
               headers: dict[str, str] | None = None, raw: bytes | None = None,
               params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    hdrs = {"Authorization": f"Bearer {TOKEN}"} if headers is None else headers
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with aiohttp.ClientSession() as http, http.request(
            method, endpoint.url + path, data=data, headers=hdrs, params=params) as resp:
        return resp.status, await resp.json()


def put(n: str) -> str:
    return f"/_matrix/app/v1/transactions/{n}"


async def test_the_hs_token_is_checked_before_anything_else(store: Store):
    rec = Recorder(store)
    async with TransactionEndpoint(rec, "svc", TOKEN) as ep:
        body = {"events": [ev(1)]}
        status, answer = await call(ep, "PUT", put("1"), body=body, headers={})
        assert (status, answer["errcode"]) == (401, "M_UNAUTHORIZED")
        for headers, params in [({"Authorization": "Bearer wrong"}, None),
                                ({"Authorization": f"Basic {TOKEN}"}, None),
                                ({}, {"access_token": "wrong"}),
                                # Both given: both must match.
                                ({"Authorization": f"Bearer {TOKEN}"}, {"access_token": "x"})]:
            status, answer = await call(ep, "PUT", put("1"), body=body, headers=headers,
                                        params=params)
            assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")
        assert rec.pushed == []
        # The legacy query parameter alone (older homeservers) is accepted.
        assert await call(ep, "PUT", put("1"), body=body, headers={},
                          params={"access_token": TOKEN}) == (200, {})
        assert rec.pushed == [["$e1"]]
        assert ep.statistics().refused == 5
        # Unknown endpoints and methods (after the token).
        status, answer = await call(ep, "GET", "/_matrix/app/v1/nothing")
        assert (status, answer["errcode"]) == (404, "M_UNRECOGNIZED")
        status, answer = await call(ep, "GET", put("1"))
        assert (status, answer["errcode"]) == (405, "M_UNRECOGNIZED")


async def test_a_transaction_is_handled_once_by_its_id_even_after_a_restart(store: Store):
    rec = Recorder(store)
    async with TransactionEndpoint(rec, "svc", TOKEN) as ep:
        assert await call(ep, "PUT", put("7"), body={"events": [ev(1), ev(2)]}) == (200, {})
        # The homeserver's retry (its 200 was lost): acknowledged, nothing handed out.
        assert await call(ep, "PUT", put("7"), body={"events": [ev(1), ev(2)]}) == (200, {})
        # The legacy path is the same endpoint.
        assert await call(ep, "PUT", "/transactions/7", body={"events": [ev(1), ev(2)]}) == (
            200, {})
        stats = ep.statistics()
        assert (stats.transactions, stats.repeats, stats.delivered) == (1, 2, 2)
    async with TransactionEndpoint(rec, "svc", TOKEN) as ep:  # the same store: remembered
        assert await call(ep, "PUT", put("7"), body={"events": [ev(1), ev(2)]}) == (200, {})
        assert ep.statistics().repeats == 1
        # Same id, other events (the homeserver's database was reset): taken as new.
        assert await call(ep, "PUT", put("7"), body={"events": [ev(3)]}) == (200, {})
        # Another service's ids are its own.
    async with TransactionEndpoint(rec, "other", TOKEN) as ep:
        assert await call(ep, "PUT", put("7"), body={"events": [ev(1), ev(2)]}) == (200, {})
        assert ep.statistics().repeats == 0
    assert rec.pushed == [["$e1", "$e2"], ["$e3"], ["$e1", "$e2"]]


async def test_a_retry_while_the_first_attempt_runs_waits_for_it(store: Store):
    rec = Recorder(store)
    rec.gate = anyio.Event()
    async with TransactionEndpoint(rec, "svc", TOKEN) as ep:
        answers: list[tuple[int, dict[str, Any]]] = []

        async def attempt() -> None:
            answers.append(await call(ep, "PUT", put("9"), body={"events": [ev(1)]}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt)
            tg.start_soon(attempt)
            await anyio.sleep(0.3)
            assert answers == []
            rec.gate.set()
        assert answers == [(200, {}), (200, {})]
        assert rec.pushed == [["$e1"]]
        assert ep.statistics().repeats == 1


async def test_consumers_too_slow_make_the_homeserver_push_it_again(store: Store):
    rec = Recorder(store)
    rec.gate = anyio.Event()
    async with TransactionEndpoint(rec, "svc", TOKEN, ack_timeout=0.3) as ep:
        status, answer = await call(ep, "PUT", put("5"), body={"events": [ev(1)]})
        assert (status, answer["errcode"]) == (503, "M_UNKNOWN")
        rec.gate.set()
        # Not recorded: the retry hands the events out.
        assert await call(ep, "PUT", put("5"), body={"events": [ev(1)]}) == (200, {})
        assert rec.pushed == [["$e1"]]
        assert ep.statistics().transactions == 1


async def test_malformed_transactions_and_events_are_skipped_never_fatal(store: Store):
    rec = Recorder(store)
    async with TransactionEndpoint(rec, "svc", TOKEN) as ep:
        status, answer = await call(ep, "PUT", put("a"), raw=b"{not json")
        assert (status, answer["errcode"]) == (400, "M_NOT_JSON")
        # A JSON transaction of the wrong shape: acknowledged (the queue moves on).
        for i, body in enumerate([[1, 2], {"events": "x"}, {}, "text"]):
            assert await call(ep, "PUT", put(f"b{i}"), body=body) == (200, {})
        bad: list[Any] = [7, None, {"event_id": "$x"}, {**ev(5), "room_id": 3},
                          {**ev(6), "content": "not an object"}, {**ev(8), "sender": None}]
        assert await call(ep, "PUT", put("c"), body={"events": [*bad, ev(1)]}) == (200, {})
        stats = ep.statistics()
        assert stats.malformed == 4
    assert rec.pushed[-1] == ["$e1"]
    assert stats.delivered == 1 and stats.skipped == len(bad)


async def test_user_and_room_queries_and_ping(store: Store):
    rec = Recorder(store)

    async def users(user_id: str) -> bool:
        return user_id == "@dev_a:hs"

    async with TransactionEndpoint(rec, "svc", TOKEN, users=users) as ep:
        assert await call(ep, "GET", "/_matrix/app/v1/users/@dev_a:hs") == (200, {})
        status, answer = await call(ep, "GET", "/_matrix/app/v1/users/@dev_b:hs")
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
        assert (await call(ep, "GET", "/users/@dev_a:hs"))[0] == 200
        status, answer = await call(ep, "GET", "/_matrix/app/v1/rooms/%23any:hs")
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND")
        assert await call(ep, "POST", "/_matrix/app/v1/ping", body={"transaction_id": "m"}) == (
            200, {})
        assert (ep.statistics().users_found, ep.statistics().users_unknown) == (2, 1)


def test_listen_address_and_the_registration_url(tmp_path: Path):
    assert listen_address("http://gw.internal:29740") == ("127.0.0.1", 29740)
    assert listen_address("http://gw.internal:29740", "0.0.0.0", 8000) == ("0.0.0.0", 8000)
    assert listen_address(None, None, 5) == ("127.0.0.1", 5)
    for bad in ["ftp://x:1", "http://x", "http://x:99999", "nothing"]:
        with pytest.raises(ConfigError):
            listen_address(bad)
    with pytest.raises(ConfigError):
        listen_address(None)
    reg = Registration.generate("example.org", url="http://127.0.0.1:29740/")
    assert reg.url == "http://127.0.0.1:29740"
    assert json.loads(reg.write(tmp_path / "r.yaml").read_text())["url"] == reg.url
    assert Registration.load(tmp_path / "r.yaml") == reg
    with pytest.raises(ConfigError):
        Registration.generate("example.org", url="http://127.0.0.1")
    with pytest.raises(ConfigError):
        TransactionEndpoint(None, "svc", "", port=1)  # type: ignore[arg-type]


class Noticing(Recorder):
    """A recorder that also takes the gateway's requests (its m.notice)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.requests: list[api.Request] = []

    async def request(self, req: api.Request) -> dict[str, Any]:
        self.requests.append(req)
        return {"event_id": f"$notice{len(self.requests)}"}


async def test_encrypted_events_are_counted_reported_once_per_room_and_noticed(
        store: Store, caplog: pytest.LogCaptureFixture):
    """The gateway cannot decrypt: never silence. Encrypted events are counted, the
    first of each room logged with the room id, the room told once; encryption
    turned on is an error in the log."""
    rec = Noticing(store)
    turned_on = {**ev(9, "!a:hs", "m.room.encryption"), "state_key": "",
                 "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
    with caplog.at_level(logging.WARNING, logger="mxsync.fleet.transactions"):
        async with TransactionEndpoint(rec, "svc", TOKEN) as ep:
            assert await call(ep, "PUT", put("1"), body={"events": [
                turned_on, ev(1, "!a:hs", "m.room.encrypted"),
                ev(2, "!a:hs", "m.room.encrypted")]}) == (200, {})
            assert await call(ep, "PUT", put("2"), body={"events": [
                ev(3, "!b:hs", "m.room.encrypted"), ev(4, "!a:hs")]}) == (200, {})
            # The homeserver's retry of a handled transaction counts nothing again.
            assert await call(ep, "PUT", put("2"), body={"events": [
                ev(3, "!b:hs", "m.room.encrypted"), ev(4, "!a:hs")]}) == (200, {})
            stats = ep.statistics()
    assert (stats.encrypted, stats.encryption_enabled) == (3, 1)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "turned end-to-end encryption on in room !a:hs" in \
        errors[0].getMessage()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m.split(" is end-to-end")[0] for m in warned] == [
        "appservice svc: room !a:hs", "appservice svc: room !b:hs"]
    assert all("Use an unencrypted room" in m for m in [*warned, errors[0].getMessage()])
    # One m.notice per room, from the gateway's sender.
    assert [(r.method, r.path.split("/rooms/")[1].split("/")[0]) for r in rec.requests] == [
        ("PUT", "%21a%3Ahs"), ("PUT", "%21b%3Ahs")]
    assert all(r.body["msgtype"] == "m.notice" for r in rec.requests)


async def test_pushed_events_reach_consumers_as_a_sync_batch_would(store: Store):
    loop = SyncLoop(None, store)  # type: ignore[arg-type]
    events = [RoomEvent(room_id="!r:hs", event_id=f"$p{i}", sender="@op:hs", type=t,
                        content={"i": i}, state_key=sk)
              for i, (t, sk) in enumerate([("org.mxsync.command", None),
                                           ("m.room.message", None),
                                           ("m.room.encrypted", None),
                                           ("m.room.power_levels", ""),
                                           ("org.mxsync.device", "d1")])]
    async with loop.subscribe("!r:hs", ()) as recv, \
            loop.subscribe("!r:hs", ("org.mxsync.command",)) as commands:
        assert await loop.push(events) == 3
        assert await loop.push(events) == 0  # delivered already: not twice
        got = [recv.receive_nowait().event_id for _ in range(3)]
        assert got == ["$p0", "$p3", "$p4"]
        assert commands.receive_nowait().event_id == "$p0"
        with pytest.raises(anyio.WouldBlock):
            recv.receive_nowait()
    # The state cache follows pushed state (get_state of an appservice stays current).
    assert loop.state["!r:hs"][("m.room.power_levels", "")].event_id == "$p3"


def test_the_registration_command_writes_the_endpoint_url(tmp_path: Path, capsys):
    from mxsync.cli import main

    out = tmp_path / "fleet.yaml"
    assert main(["fleet", "registration", "--server-name", "hs.example", "--out",
                 str(out), "--url", "http://10.0.0.5:8009"]) == 0
    assert Registration.load(out).url == "http://10.0.0.5:8009"
    assert main(["fleet", "registration", "--server-name", "hs.example", "--out",
                 str(out), "--no-url"]) == 0
    assert Registration.load(out).url is None
    assert main(["fleet", "registration", "--server-name", "hs.example", "--out",
                 str(out), "--url", "http://no-port"]) == 2
    assert "names no port" in capsys.readouterr().err
