"""Error paths of the engine against a misbehaving HTTP server.

A real Synapse does not answer 500s or garbage on demand, so these tests use a
tiny aiohttp server that does (fakes are for the engine's error paths only;
everything else runs against Synapse). Each test counts the requests the
client makes: backoff, not a spin.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from aiohttp import web

from mxsync import Client, HomeserverUnavailable, OutgoingEvent
from mxsync.engine.http import Backoff

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


class Misbehaving:
    def __init__(self, sync_mode: str, send_mode: str = "ok", retry_after_ms: int = 300) -> None:
        self.sync_mode = sync_mode
        self.send_mode = send_mode
        self.retry_after_ms = retry_after_ms
        #: A reverse proxy in front of a stopped homeserver: everything answers 502.
        self.down = False
        self.hits: Counter[str] = Counter()
        self.sent_txns: list[str] = []

    async def versions(self, request: web.Request) -> web.Response:
        self.hits["versions"] += 1
        if self.down:
            return web.Response(status=502, text="bad gateway")
        return web.json_response({"versions": ["v1.11"]})

    async def whoami(self, request: web.Request) -> web.Response:
        self.hits["whoami"] += 1
        return web.json_response({"user_id": "@x:fake", "device_id": "DEV"})

    async def sync(self, request: web.Request) -> web.Response:
        self.hits["sync"] += 1
        if self.down:
            return web.Response(status=502, text="bad gateway")
        if self.sync_mode == "500":
            return web.Response(status=500, text="boom")
        if self.sync_mode == "garbage":
            return web.Response(status=200, text="{not json", content_type="application/json")
        if self.sync_mode == "wrong-shape":
            return web.json_response({"rooms": "nope"})
        # "instant": a valid, empty answer that ignores the long-poll timeout.
        return web.json_response({"next_batch": f"s{self.hits['sync']}"})

    async def send(self, request: web.Request) -> web.Response:
        self.hits["send"] += 1
        if self.send_mode == "429" and self.hits["send"] <= 3:
            return web.json_response(
                {"errcode": "M_LIMIT_EXCEEDED", "error": "slow down",
                 "retry_after_ms": self.retry_after_ms},
                status=429,
            )
        if self.send_mode == "500" and self.hits["send"] <= 3:
            return web.Response(status=502, text="bad gateway")
        self.sent_txns.append(request.match_info["txn"])
        return web.json_response({"event_id": f"$e{len(self.sent_txns)}"})


class GapServer(Misbehaving):
    """One room of 30 events, ``$e0`` .. ``$e29``, ``$e10`` a power-level change.

    The first sync (new store) holds ``$e0``; the second is limited to ``$e28``,
    ``$e29``, with ``$e10`` in its state block. Tokens: ``tN`` is right after
    ``$eN``. One /messages request (``fail_at``) answers 502. Only backwards
    pages are served, and a ``to=`` bound is refused: the gap repair walks back
    from ``prev_batch`` and never bounds the walk by a stream token.
    """

    room = "!r:fake"

    def __init__(self, *, fail_at: int = 3) -> None:
        super().__init__("instant")
        self.fail_at = fail_at
        self.contexts: list[str] = []

    @staticmethod
    def event(i: int) -> dict:
        if i == 10:
            return {"event_id": "$e10", "sender": "@w:fake", "type": "m.room.power_levels",
                    "state_key": "", "content": {"users": {"@w:fake": 100}},
                    "origin_server_ts": i}
        return {"event_id": f"$e{i}", "sender": "@w:fake", "type": "org.mxsync.test",
                "content": {"i": i}, "origin_server_ts": i}

    async def sync(self, request: web.Request) -> web.Response:
        self.hits["sync"] += 1
        since = request.query.get("since")
        if since is None:
            room = {"timeline": {"events": [self.event(0)], "limited": False}}
            return web.json_response({"next_batch": "s1", "rooms": {"join": {self.room: room}}})
        if since == "s1":
            room = {"state": {"events": [self.event(10)]},
                    "timeline": {"events": [self.event(28), self.event(29)], "limited": True,
                                 "prev_batch": "t27"}}
            return web.json_response({"next_batch": "s2", "rooms": {"join": {self.room: room}}})
        return web.json_response({"next_batch": since})

    async def context(self, request: web.Request) -> web.Response:
        self.contexts.append(request.match_info["event"])
        return web.json_response({"errcode": "M_UNRECOGNIZED"}, status=400)

    async def messages(self, request: web.Request) -> web.Response:
        self.hits["messages"] += 1
        if self.hits["messages"] == self.fail_at:
            return web.Response(status=502, text="bad gateway")
        assert request.query["dir"] == "b" and "to" not in request.query
        top = int(request.query["from"][1:])
        low = max(-1, top - int(request.query["limit"]))
        events = [self.event(i) for i in range(top, low, -1)]
        answer = {"chunk": events, "start": request.query["from"]}
        if low >= 0:
            answer["end"] = f"t{low}"
        return web.json_response(answer)


@pytest.fixture
async def fake() -> AsyncIterator[Callable[..., anyio.abc.ObjectReceiveStream]]:
    runners: list[web.AppRunner] = []

    async def start(server: Misbehaving) -> str:
        app = web.Application()
        app.router.add_get("/_matrix/client/versions", server.versions)
        app.router.add_get("/_matrix/client/v3/account/whoami", server.whoami)
        app.router.add_get("/_matrix/client/v3/sync", server.sync)
        app.router.add_put("/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", server.send)
        if isinstance(server, GapServer):
            app.router.add_get("/_matrix/client/v3/rooms/{room}/context/{event}", server.context)
            app.router.add_get("/_matrix/client/v3/rooms/{room}/messages", server.messages)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start  # type: ignore[misc]
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("mode", ["500", "garbage", "wrong-shape"])
async def test_failing_sync_backs_off_and_logs_once(fake, mode, caplog):
    server = Misbehaving(mode)
    url = await fake(server)
    caplog.set_level(logging.WARNING, logger="mxsync.sync")
    async with Client(url, "@x:fake", access_token="secret-token-123") as client:
        await anyio.sleep(4.0)
        assert client.status.state == "backing_off"
        assert client.status.last_error
        assert "secret-token-123" not in client.status.last_error
    # Backoff starts at 0.25-0.5 s and doubles: a handful of requests in 4 s.
    assert 2 <= server.hits["sync"] <= 8, server.hits
    warnings = [r for r in caplog.records if r.name == "mxsync.sync"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert all("secret-token-123" not in r.getMessage() for r in caplog.records)


async def test_a_sync_loop_deep_in_backoff_wakes_when_the_server_is_back(fake):
    # A proxy answers 502 while the homeserver behind it is down. The loop's next
    # attempt is 50-100 s away; the shared liveness probe must wake it far sooner.
    server = Misbehaving("instant")
    url = await fake(server)
    client = Client(url, "@x:fake", access_token="t")
    client.sync._backoff = Backoff(base=100.0, cap=100.0)
    async with client:
        await client.wait_synced()
        server.down = True
        syncs_before = server.hits["sync"]
        with anyio.fail_after(10):
            while client.status.state != "backing_off":  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await anyio.sleep(3.0)  # long enough for at least one probe to see the 502
        assert server.hits["versions"] >= 1
        failed_syncs = server.hits["sync"] - syncs_before
        server.down = False
        with anyio.fail_after(30):
            while client.status.state != "synced":  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert client.http.liveness.recoveries == 1
    assert failed_syncs == 1  # while down: one /sync, then only probes
    assert server.hits["versions"] <= 8, server.hits  # one per 1.5-2 s while down


async def test_a_broken_sync_behind_an_answering_server_keeps_its_backoff(fake):
    # /versions answers, /sync fails: probing must not turn the backoff into a
    # retry every probe interval.
    server = Misbehaving("500")
    url = await fake(server)
    async with Client(url, "@x:fake", access_token="t") as client:
        await anyio.sleep(6.0)
        assert client.status.state == "backing_off"
    assert client.http.liveness.recoveries == 0
    assert server.hits["sync"] <= 8, server.hits  # 0.25-0.5 s, doubling: about 5 in 6 s
    assert server.hits["versions"] <= 3, server.hits


async def test_instant_empty_syncs_do_not_spin(fake):
    server = Misbehaving("instant")
    url = await fake(server)
    async with Client(url, "@x:fake", access_token="t") as client:
        await anyio.sleep(2.0)
        assert client.status.state == "synced"
    assert server.hits["sync"] <= 12, server.hits  # min_interval 0.2 s


@pytest.mark.parametrize("mode", ["429", "500"])
async def test_outbox_retries_with_the_same_txn_id(fake, mode):
    server = Misbehaving("instant", send_mode=mode)
    url = await fake(server)
    async with Client(url, "@x:fake", access_token="t") as client:
        handle = await client.send("!r:fake", "org.mxsync.test", {"a": 1})
        with anyio.fail_after(20):
            event_id = await handle.wait()
    assert event_id == "$e1"
    assert server.hits["send"] == 4  # three refusals, then the same txn id again
    assert server.sent_txns == [handle.txn_id]


async def test_outbox_learns_the_pace_a_429_imposes_and_forgets_it_after_a_quiet_spell(fake):
    server = Misbehaving("instant", send_mode="429", retry_after_ms=2000)
    url = await fake(server)
    async with Client(url, "@x:fake", access_token="t") as client:
        outbox = client.outbox
        assert outbox.next_slot() <= time.monotonic()  # nothing learned yet: now
        with anyio.fail_after(20):
            await (await client.send("!r:fake", "org.mxsync.test", {"a": 1})).wait()
        # Refused three times with retry_after_ms=2000: the next send is expected
        # to be accepted ~2 s after the last one, not at once.
        sent_at = time.monotonic()
        assert 1.0 < outbox.next_slot() - sent_at <= 2.0
        # A send that goes straight through after a quiet spell (2x the pace: the
        # server's bucket has refilled) makes it forget the pace: no lasting slowdown.
        await anyio.sleep(max(0.0, outbox.next_slot() + 2.1 - time.monotonic()))
        with anyio.fail_after(20):
            await (await client.send("!r:fake", "org.mxsync.test", {"b": 2})).wait()
        assert outbox.next_slot() <= time.monotonic()
    assert server.hits["send"] == 3 + 1 + 1


async def test_dead_server_login_fails_clearly_and_quickly():
    client = Client("http://127.0.0.1:9", "@x:fake", access_token="t", call_attempts=4)
    with anyio.fail_after(20), pytest.raises(HomeserverUnavailable):
        async with client:
            pass
    assert client.http.requests == 4


async def test_bad_arguments_raise_before_any_io(fake):
    from mxsync import ConfigError

    with pytest.raises(ConfigError, match="user_id"):
        Client("http://127.0.0.1:9", "alice", password="x")
    with pytest.raises(ConfigError, match="homeserver"):
        Client("127.0.0.1:9", "@a:b", password="x")
    with pytest.raises(ConfigError, match="password"):
        Client("http://127.0.0.1:9", "@a:b")
    server = Misbehaving("instant")
    async with Client(await fake(server), "@x:fake", access_token="t") as c:
        with pytest.raises(ConfigError, match="room id"):
            await c.send_many([OutgoingEvent("not-a-room", "t", {})])
        assert c.outbox.pending == 0
    assert server.hits["send"] == 0


async def test_an_error_in_the_middle_of_a_gap_fill_resumes_it_without_repeats(fake):
    # Pages of 4 backwards from the timeline: $e27-$e24, $e23-$e20, then a 502.
    # The retry walks the gap again (nothing was delivered yet) down to $e0, the
    # last delivered event, and delivers $e1..$e27 oldest first; $e10, also in
    # the state block, comes once, in its place.
    server = GapServer()
    url = await fake(server)
    client = Client(url, "@x:fake", access_token="t")
    client.sync.gap_page_events = 4
    got: list[str] = []
    async with client, client.room_events(GapServer.room) as recv:
        with anyio.fail_after(20):
            async for ev in recv:
                got.append(ev.event_id)
                if len(got) == 29:
                    break
        with anyio.move_on_after(1.0):
            extra = await recv.receive()
            pytest.fail(f"unexpected extra event {extra.event_id}")
        assert client.status.state == "synced"
        assert client.sync.state[GapServer.room][("m.room.power_levels", "")].event_id == "$e10"
    assert got == [f"$e{i}" for i in range(1, 30)]
    assert server.contexts == []
    assert server.hits["sync"] <= 20, server.hits  # one failed batch, retried after a backoff
