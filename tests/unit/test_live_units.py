"""The live channel's pure parts: message contents, the to-device engine's retries and
dispatch (over a scripted Http), awareness encoding, peer bookkeeping."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pycrdt
import pytest

from mxsync.docs.awareness import MATRIX, AwarenessSync, encode_states
from mxsync.docs.peers import Peers
from mxsync.engine.todevice import ToDevice
from mxsync.errors import ForbiddenError, ProtocolError, RateLimitedError, TransientError
from mxsync.protocol import live as wire
from mxsync.protocol.types import DOC_AWARENESS, DOC_LIVE

pytestmark = pytest.mark.anyio

BASE = {"room_id": "!r:x", "doc": "notes", "device_id": "DEV"}


# -- contents ------------------------------------------------------------------------


def test_messages_round_trip_with_the_documented_encoding():
    msg = wire.LiveMessage(update=b"\x01\x01\x01\x00\x04\x01\x01t\x05hello\x00", ts=5, **BASE)
    etype, content = wire.encode_message(msg)
    assert etype == DOC_LIVE
    assert content == {**BASE, "v": 1, "ts": 5, "update": "AQEBAAQBAXQFaGVsbG8A"}
    assert wire.decode_message(etype, content) == msg
    aw = wire.AwarenessMessage(op="hello", **BASE)
    etype, content = wire.encode_message(aw)
    assert etype == DOC_AWARENESS and content["op"] == "hello" and content["v"] == 1
    assert wire.decode_message(etype, content) == aw


@pytest.mark.parametrize("etype,content", [
    (DOC_LIVE, {**BASE, "v": 2, "update": "AA=="}),
    (DOC_LIVE, {**BASE, "v": 1}),
    (DOC_LIVE, {**BASE, "v": 1, "update": ""}),
    (DOC_LIVE, {**BASE, "v": 1, "update": "not base64!"}),
    (DOC_LIVE, {**BASE, "v": 1, "room_id": "r", "update": "AA=="}),
    (DOC_LIVE, {**BASE, "v": 1, "doc": "", "update": "AA=="}),
    (DOC_LIVE, {**BASE, "v": 1, "device_id": "", "update": "AA=="}),
    (DOC_LIVE, {**BASE, "v": 1, "update": "A" * 50_000}),
    (DOC_AWARENESS, {**BASE, "v": 1, "op": "wave"}),
    (DOC_AWARENESS, {**BASE, "v": 1, "op": "update"}),
    (DOC_AWARENESS, [1, 2]),
    ("org.mxsync.other", {**BASE, "v": 1}),
])
def test_malformed_messages_raise_protocol_error_only(etype, content):
    with pytest.raises(ProtocolError):
        wire.decode_message(etype, content)


# -- the to-device engine ---------------------------------------------------------------


class _Liveness:
    up: bool | None = None

    async def wait(self, delay: float) -> bool:
        await anyio.sleep(min(delay, 0.01))
        return False


class ScriptedHttp:
    """Answers from a script of outcomes (exceptions raised, anything else returned)."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.requests: list[Any] = []
        self.liveness = _Liveness()

    async def call(self, req: Any) -> dict[str, Any]:
        self.requests.append(req)
        outcome = self.outcomes.pop(0) if self.outcomes else {}
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _limited(ms: int) -> RateLimitedError:
    return RateLimitedError(429, "M_LIMIT_EXCEEDED", "slow down", method="PUT", path="/x",
                            retry_after_ms=ms)


async def test_a_send_keeps_its_txn_id_through_429_and_transient_errors():
    http = ScriptedHttp([_limited(10), TransientError("reset"), {}])
    td = ToDevice(http)  # type: ignore[arg-type]
    assert await td.send(DOC_LIVE, {"@a:x": {"D": {"k": 1}}})
    paths = {r.path for r in http.requests}
    assert len(http.requests) == 3 and len(paths) == 1
    assert next(iter(paths)).startswith("/_matrix/client/v3/sendToDevice/org.mxsync.doc.live/")
    assert http.requests[0].body == {"messages": {"@a:x": {"D": {"k": 1}}}}
    assert await td.send(DOC_LIVE, {"@a:x": {"D": {}}})
    assert http.requests[-1].path not in paths  # a new message, a new txn id
    st = td.statistics()
    assert (st.sent, st.rate_limited, st.dropped, st.addressed) == (2, 1, 0, 2)


async def test_a_send_gives_up_at_once_while_the_server_is_known_down():
    http = ScriptedHttp([{}])
    http.liveness.up = False
    td = ToDevice(http)  # type: ignore[arg-type]
    assert not await td.send(DOC_LIVE, {"@a:x": {"D": {}}})
    assert http.requests == [] and td.statistics().dropped == 1
    http.liveness.up = True
    assert await td.send(DOC_LIVE, {"@a:x": {"D": {}}})
    assert len(http.requests) == 1


async def test_a_send_gives_up_within_its_bounds_and_raises_a_refusal():
    td = ToDevice(ScriptedHttp([TransientError("down")] * 10), attempts=3)  # type: ignore[arg-type]
    assert not await td.send(DOC_LIVE, {"@a:x": {"D": {}}})
    td2 = ToDevice(ScriptedHttp([_limited(60_000)]), deadline=1.0)  # type: ignore[arg-type]
    started = time.monotonic()
    assert not await td2.send(DOC_LIVE, {"@a:x": {"D": {}}})
    assert time.monotonic() - started < 0.5  # a wait past the deadline is not waited
    assert td.statistics().dropped == td2.statistics().dropped == 1
    td3 = ToDevice(ScriptedHttp([ForbiddenError(403, "M_FORBIDDEN", "no")]))  # type: ignore[arg-type]
    with pytest.raises(ForbiddenError):
        await td3.send(DOC_LIVE, {"@a:x": {"D": {}}})


async def test_received_events_reach_matching_consumers_and_never_block():
    td = ToDevice(ScriptedHttp([]))  # type: ignore[arg-type]
    async with td.subscribe([DOC_LIVE], buffer=2) as live, td.subscribe(["org.mxsync."]) as every:
        td.receive_sync({"to_device": {"events": [
            {"type": "m.room_key", "sender": "@a:x", "content": {}},  # nio's, not ours
            {"type": DOC_LIVE, "sender": "@a:x", "content": {"n": 1}},
            "garbage",
            {"type": DOC_AWARENESS, "sender": 5, "content": {}},
            {"type": DOC_AWARENESS, "sender": "@b:x", "content": {"n": 2}},
            {"type": DOC_LIVE, "sender": "@a:x", "content": {"n": 3}},
            {"type": DOC_LIVE, "sender": "@a:x", "content": {"n": 4}},  # live is full
        ]}})
        td.receive_sync({"to_device": "nonsense"})
        got_live = [live.receive_nowait().content["n"] for _ in range(2)]
        got_every = [every.receive_nowait().content["n"] for _ in range(4)]
    assert got_live == [1, 3] and got_every == [1, 2, 3, 4]
    st = td.statistics()
    assert (st.received, st.malformed, st.overflowed) == (4, 2, 1)


# -- awareness and peers -------------------------------------------------------------------


def test_encoded_states_apply_in_another_awareness_and_removal_drops_them():
    a = pycrdt.Awareness(pycrdt.Doc(client_id=1))
    b = pycrdt.Awareness(pycrdt.Doc(client_id=2))
    a.set_local_state({"user": "alice"})
    assert encode_states(a, [1]) == b"\x01\x01\x01\x10" + b'{"user":"alice"}'
    b.apply_awareness_update(encode_states(a, [1]), MATRIX)
    assert b.states[1] == {"user": "alice"}
    b.apply_awareness_update(encode_states(a, [1], removed=True), MATRIX)
    assert 1 not in b.states
    assert encode_states(a, [99]) == b"\x00"  # unknown ids are left out


class FakeEngine:
    """The few Engine calls Peers makes, recorded."""

    user_id = "@me:x"
    device_id = "ME"

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def is_encrypted(self, room_id: str) -> bool:
        return False

    async def get_state(self, room_id: str, event_type: str, state_key: str = "") -> None:
        return None

    async def joined_members(self, room_id: str) -> list[str]:
        return ["@me:x", "@a:x", "@b:x"]

    async def send_to_device(self, event_type: str, messages: dict[str, Any]) -> bool:
        self.sent.append((event_type, messages))
        return True


async def test_peers_expire_bound_the_live_fan_out_and_ignore_stale_hellos():
    engine = FakeEngine()
    peers = Peers(engine, "!r:x", "notes", timeout=0.2, max_devices=2)  # type: ignore[arg-type]
    peers.heard("@a:x", "A1", 0)
    peers.heard("@a:x", "A2", int(time.time() * 1000))
    peers.heard("@b:x", "B1", int((time.time() - 60) * 1000))  # queued long ago
    assert peers.devices() == [("@a:x", "A1"), ("@a:x", "A2")]
    assert peers.live_targets() == peers.devices()
    peers.heard("@b:x", "B2", 0)
    assert peers.live_targets() == []  # above max_devices: the timeline alone
    peers.gone("@b:x", "B2")
    await anyio.sleep(0.25)
    assert peers.devices() == []
    assert await peers.is_member("@a:x") and not await peers.is_member("@z:x")


async def test_awareness_is_coalesced_answered_and_not_forwarded():
    engine = FakeEngine()
    peers = Peers(engine, "!r:x", "notes", timeout=5.0)  # type: ignore[arg-type]
    aw = pycrdt.Awareness(pycrdt.Doc(client_id=7), outdated_timeout=5000)
    sync = AwarenessSync(aw, peers, rate=10.0)
    other = pycrdt.Awareness(pycrdt.Doc(client_id=8))
    other.set_local_state({"user": "bob"})
    async with anyio.create_task_group() as tg:
        tg.start_soon(sync.run, tg)
        await anyio.sleep(0.05)
        hello = [m for t, m in engine.sent if "*" in next(iter(m.values()))]
        assert len(hello) == 1 and sorted(hello[0]) == ["@a:x", "@b:x", "@me:x"]
        await sync.receive("@b:x", peers.awareness_message("hello", encode_states(other, [8])))
        assert aw.states[8] == {"user": "bob"}
        here = engine.sent[-1][1]
        # The answer goes to the asking device only (its device_id: this fake's "ME").
        assert list(here) == ["@b:x"] and list(here["@b:x"]) == ["ME"]
        assert wire.decode_message(DOC_AWARENESS, here["@b:x"]["ME"]).op == "here"
        before = len(engine.sent)
        for i in range(30):
            aw.set_local_state({"cursor": i})
        await anyio.sleep(0.35)
        updates = engine.sent[before:]
        assert 1 <= len(updates) <= 5  # 30 changes, paced at 10/s
        last = wire.decode_message(DOC_AWARENESS, updates[-1][1]["@b:x"]["ME"])
        probe = pycrdt.Awareness(pycrdt.Doc(client_id=9))
        probe.apply_awareness_update(last.awareness, "test")  # type: ignore[union-attr]
        assert probe.states[7] == {"cursor": 29}
        assert 8 not in probe.states  # bob's state came from Matrix: never sent on
        tg.cancel_scope.cancel()


async def test_a_local_change_is_stored_before_any_peer_sees_it_and_early_ones_wait():
    from mxsync.docs.live import LiveUpdates
    from mxsync.docs.replica import Replica
    from mxsync.protocol import docs as proto

    engine = FakeEngine()
    order: list[str] = []

    async def send_to_device(event_type: str, messages: dict[str, Any]) -> bool:
        order.append("sent")
        return True

    async def persist() -> None:
        await anyio.sleep(0.02)
        order.append("stored")

    engine.send_to_device = send_to_device  # type: ignore[method-assign]
    peers = Peers(engine, "!r:x", "notes")  # type: ignore[arg-type]
    peers.heard("@a:x", "A1", 0)
    replica = Replica("notes", policy=proto.SnapshotPolicy("me"))
    loaded = False
    live = LiveUpdates(replica, peers, persist=persist, ready=lambda: loaded)
    live.observe()
    async with anyio.create_task_group() as tg:
        tg.start_soon(live.run)
        replica.doc.get("t", type=pycrdt.Text).insert(0, "hi")
        with anyio.fail_after(5):
            while live.sent < 1:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert order == ["stored", "sent"]
        other = pycrdt.Doc()
        other.get("t", type=pycrdt.Text).insert(0, "yo")
        msg = peers.live_message(other.get_update())
        await live.receive("@a:x", msg)  # before the load: left to the timeline
        assert live.early == 1 and live.applied == 0
        loaded = True
        await live.receive("@a:x", msg)
        assert live.applied == 1 and "yo" in str(replica.doc.get("t", type=pycrdt.Text))
        tg.cancel_scope.cancel()
    live.close()


async def test_the_pending_send_resolves_for_every_batch_sent_or_not():
    """What the writer holds its timeline batch behind (``pending_send``) is set once
    the live send of those changes returned, and also when they go by the timeline
    alone (too big to go live), so a held batch never waits for nothing."""
    from mxsync.docs.live import LiveUpdates
    from mxsync.docs.replica import Replica
    from mxsync.protocol import docs as proto

    engine = FakeEngine()
    release = anyio.Event()

    async def send_to_device(event_type: str, messages: dict[str, Any]) -> bool:
        await release.wait()
        engine.sent.append((event_type, messages))
        return True

    engine.send_to_device = send_to_device  # type: ignore[method-assign]
    peers = Peers(engine, "!r:x", "notes")  # type: ignore[arg-type]
    replica = Replica("notes", policy=proto.SnapshotPolicy("me"))
    live = LiveUpdates(replica, peers)
    live.observe()
    text = replica.doc.get("t", type=pycrdt.Text)
    text.insert(0, "alone")  # no peers: nothing encoded, nothing to wait for
    assert live.pending_send() is None
    peers.heard("@a:x", "A1", int(time.time() * 1000))
    async with anyio.create_task_group() as tg:
        tg.start_soon(live.run)
        text.insert(0, "hi")
        held = live.pending_send()
        assert held is not None and not held.is_set()
        with anyio.fail_after(5):
            while not live._sending_done:  # noqa: ASYNC110 - taken by run()
                await anyio.sleep(0.005)
        assert live.pending_send() is held  # while it is being sent
        text.insert(0, "more")  # made while the first send hangs: the next batch
        assert live.pending_send() is held
        later = live._pending_done
        assert later is not None and later is not held
        await anyio.sleep(0.05)
        assert not held.is_set()  # the send has not returned
        release.set()
        with anyio.fail_after(5):
            await held.wait()
            await later.wait()
        assert live.sent == 2 and len(engine.sent) == 2
        text.insert(0, "x" * (wire.MAX_LIVE_BYTES + 10))  # timeline only
        big = live.pending_send()
        assert big is not None
        with anyio.fail_after(5):
            await big.wait()
        assert live.not_sent == 1 and live.sent == 2
        tg.cancel_scope.cancel()
    live.close()
