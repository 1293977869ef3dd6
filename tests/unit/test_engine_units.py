"""Pure parts of the engine: backoff bounds, liveness probing, event parsing,
power-level rules."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import anyio
import anyio.lowlevel
import pytest

from mxsync.engine.authz import power_level_allows, room_creators
from mxsync.engine.events import RoomEvent, parse_event
from mxsync.engine.http import Backoff, Liveness
from mxsync.engine.store import Store
from mxsync.engine.sync import SyncLoop


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


class ScriptedProbe:
    """A probe that answers from a script (the last answer repeats) and logs its calls."""

    def __init__(self, answers: Iterable[bool | None]) -> None:
        self.answers = list(answers)
        self.calls: list[float] = []
        self.called = anyio.Event()

    async def __call__(self) -> bool:
        self.calls.append(time.monotonic())
        self.called.set()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:  # a server that accepts the connection and never answers
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()
        return bool(answer)


async def wait_all(live: Liveness, delays: list[float]) -> list[bool]:
    woken: list[bool] = [False] * len(delays)

    async def one(i: int) -> None:
        woken[i] = await live.wait(delays[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(delays)):
            tg.start_soon(one, i)
    return woken


@pytest.mark.anyio
async def test_liveness_wakes_every_waiter_once_the_server_answers_again():
    probe = ScriptedProbe([False, False, True])
    live = Liveness(probe, interval=0.05)
    live.unreachable()
    with anyio.fail_after(5):  # the waits are 60 s: only the wake-up ends them
        woken = await wait_all(live, [60, 60, 60])
    assert woken == [True, True, True]
    assert len(probe.calls) == 3  # one probe at a time for all three waiters
    assert live.up is True and live.recoveries == 1


@pytest.mark.anyio
async def test_liveness_probes_are_shared_and_spaced_by_the_interval():
    probe = ScriptedProbe([False])
    live = Liveness(probe, interval=0.05)
    live.unreachable()
    woken = await wait_all(live, [0.6] * 4)
    assert woken == [False] * 4
    gaps = [b - a for a, b in zip(probe.calls, probe.calls[1:], strict=False)]
    assert len(probe.calls) >= 2
    assert min(gaps) >= 0.75 * 0.05 - 0.005  # jitter never brings probes closer
    assert len(probe.calls) <= 0.6 / (0.75 * 0.05) + 1  # four waiters, one prober


@pytest.mark.anyio
async def test_a_failed_request_counts_as_a_probe():
    probe = ScriptedProbe([False])
    live = Liveness(probe, interval=10)
    live.unreachable()
    assert await live.wait(0.2) is False
    live.unsure()  # a 5xx postpones the probe too
    assert await live.wait(0.2) is False
    assert probe.calls == []


@pytest.mark.anyio
async def test_a_server_that_answers_is_never_probed():
    probe = ScriptedProbe([True])
    live = Liveness(probe, interval=0.01)
    live.answered()
    assert await live.wait(0.2) is False
    assert probe.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize("fail", ["unreachable", "unsure"])
async def test_an_answering_probe_without_an_outage_wakes_nobody(fail):
    # /sync fails (a broken endpoint, a proxy dropping long polls) while the probe
    # endpoint answers: the loop must keep its backoff, not retry every interval.
    probe = ScriptedProbe([True])
    live = Liveness(probe, interval=0.02)
    getattr(live, fail)()
    t0 = time.monotonic()
    assert await live.wait(0.3) is False
    assert time.monotonic() - t0 >= 0.29
    assert len(probe.calls) == 1  # it answered: no more probes
    assert live.recoveries == 0


@pytest.mark.anyio
async def test_any_answer_after_a_failed_probe_wakes_the_waiters():
    probe = ScriptedProbe([False])
    live = Liveness(probe, interval=0.02)
    live.unreachable()
    woken = []

    async def waiter() -> None:
        woken.append(await live.wait(60))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await probe.called.wait()
            await anyio.sleep(0.01)
            live.answered()  # another loop's request went through
    assert woken == [True]
    assert live.recoveries == 1
    live.unreachable()
    live.answered()  # no probe failed since: not a recovery
    assert live.recoveries == 1


@pytest.mark.anyio
async def test_a_hanging_probe_is_cut_and_the_wait_keeps_its_deadline():
    probe = ScriptedProbe([None])
    live = Liveness(probe, interval=0.02, timeout=0.05)
    live.unreachable()
    t0 = time.monotonic()
    with anyio.fail_after(5):
        assert await live.wait(0.4) is False
    assert time.monotonic() - t0 < 1.0
    assert 2 <= len(probe.calls) <= 0.4 / 0.05 + 1
    assert live.up is False


@pytest.mark.anyio
async def test_short_waits_end_on_time():
    probe = ScriptedProbe([False])
    live = Liveness(probe, interval=0.01)
    live.unreachable()
    t0 = time.monotonic()
    assert await live.wait(0.0) is False
    assert await live.wait(0.05) is False
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("bad", [{"interval": 0}, {"timeout": 0}, {"interval": -1}])
def test_liveness_refuses_nonsense(bad):
    async def probe() -> bool:
        return True

    with pytest.raises(ValueError):
        Liveness(probe, **bad)


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


@pytest.mark.anyio
@pytest.mark.parametrize("version", ["pairs", "positions"])
async def test_an_in_flight_record_is_read_into_a_bounded_memory(version):
    # "pairs": the bare list older versions wrote; "positions": the record that
    # also says how far each room got, so that a gap fill resumes from there.
    store = Store(None)
    await store.open()
    try:
        await store.kv_set("sync.last", "!r:x", b"$persisted")
        pairs = [["!r:x", f"$e{i}"] for i in range(5)]
        record = pairs if version == "pairs" else {"ids": pairs, "last": {"!r:x": "$e4"}}
        await store.kv_set("sync", "inflight", json.dumps(record).encode())
        loop = SyncLoop(None, store, seen_per_room=3)  # loading makes no request
        await loop._load()
        room = loop.dispatch.rooms["!r:x"]
        assert list(room.seen) == ["$e2", "$e3", "$e4"]
        assert room.last_event_id == ("$persisted" if version == "pairs" else "$e4")
    finally:
        await store.close()
