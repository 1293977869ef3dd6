"""Sensor streams against a real Synapse with its default rate limits (0.2 events/s, burst 10).

Each test gets fresh users, so each starts with a full burst of its own.
"""

from __future__ import annotations

import logging
import math
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from mxsync import Client, ConfigError, Reading, RoomEvent
from mxsync.cli.sensor import parse_time, parse_value
from mxsync.dev import Credentials
from mxsync.protocol import api
from mxsync.protocol.readings import BatchEncoder, DeviceState, decode_batch, to_content
from mxsync.protocol.types import DEVICE, READINGS
from mxsync.streams import BufferFull, aggregate

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]


def now_ms() -> int:
    return int(time.time() * 1000)


async def sensor_room(make_user, make_client, *, relaxed: bool = False, **dev_kw):
    """A dashboard user who owns the room and a device user who may write to it."""
    dash_creds = await make_user("dash", relaxed=relaxed)
    dev_creds = await make_user("dev", relaxed=relaxed)
    dash = await make_client(dash_creds)
    room = await dash.create_room("sensors", invite=[dev_creds.user_id])
    dev = await make_client(dev_creds, **dev_kw)
    await dev.join(room)
    return dash, dev, room, dash_creds, dev_creds


def series(seed: int, n: int) -> list[tuple[str, object]]:
    """n readings of three sensors: a temperature random walk that needs rounding
    to 2 decimals, a counter, and a door contact."""
    rng = random.Random(seed)
    temp, count = 20.0, 0
    out: list[tuple[str, object]] = []
    for i in range(n):
        k = i % 3
        if k == 0:
            temp += rng.uniform(-0.05, 0.05)
            out.append(("temp", temp + rng.random() / 10_000))
        elif k == 1:
            count += rng.randrange(10)
            out.append(("count", count))
        else:
            out.append(("door", rng.random() < 0.1))
    return out


def expected(sensor: str, value: object) -> object:
    return round(value, 2) if isinstance(value, float) else value


async def take(sub, n: int, deadline: float) -> list[Reading]:
    got: list[Reading] = []
    with anyio.fail_after(deadline):
        async for r in sub:
            got.append(r)
            if len(got) >= n:
                break
    return got


def by_sensor(readings) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in readings:
        out.setdefault(r.sensor, []).append(r)
    return out


# -- the three acceptance tests ----------------------------------------------------------


async def test_100k_readings_arrive_complete_in_order_and_exact(make_user, make_client):
    """Default rate limits: 100,000 readings of three kinds, exactly as published."""
    dash, dev, room, *_ = await sensor_room(make_user, make_client)
    data = series(1, 100_000)
    async with dash.subscribe(room) as sub:
        async with dev.publisher(room, device="boiler-1", precision=2) as pub:
            pub.declare("temp", precision=2, unit="Cel", name="Boiler temperature")
            for i, (sensor, value) in enumerate(data):
                pub.publish(sensor, value)
                if i % 10_000 == 0:
                    await anyio.lowlevel.checkpoint()  # the pump seals full batches meanwhile
            with anyio.fail_after(120):
                await pub.flush()
            stats = pub.statistics()
            got = await take(sub, len(data), deadline=60)
    # Rate limits were the default ones: a few events carried everything.
    assert stats.readings_sent == 100_000
    assert stats.batches_sent <= 8, stats
    assert 0 < stats.bytes_per_reading < 4, stats
    assert sub.statistics().duplicates == 0 and sub.statistics().gaps == 0
    want = by_sensor(Reading(s, 0, expected(s, v)) for s, v in data)
    have = by_sensor(got)
    assert set(have) == {"temp", "count", "door"}
    for sensor, readings in have.items():
        assert [r.value for r in readings] == [r.value for r in want[sensor]], sensor
        assert [type(r.value) for r in readings] == [type(r.value) for r in want[sensor]]
        times = [r.t_ms for r in readings]
        assert times == sorted(times)
        assert {r.device for r in readings} == {"boiler-1"}
    assert {r.unit for r in have["temp"]} == {"Cel"}
    assert {r.unit for r in have["count"]} == {None}


async def test_history_returns_exactly_the_range_and_window_agrees(make_user, make_client):
    """Several batches; history over a range cut through them; buckets; last values."""
    dash, dev, room, dash_creds, _ = await sensor_room(make_user, make_client)
    t0 = now_ms() - 90_000
    rng = random.Random(2)
    published: list[Reading] = []
    async with dev.publisher(room, device="meter", precision=3) as pub:
        pub.declare("power", unit="W")
        for phase in range(4):  # one flush per phase: at least four events to page over
            for i in range(phase * 5_000, (phase + 1) * 5_000):
                t = t0 + i * 3
                v = round(rng.gauss(1500, 40), 3)
                pub.publish("power", v, t=t)
                pub.publish("state", rng.choice(["idle", "heating", "off"]), t=t)
                published.append(Reading("power", t, v, "W"))
            with anyio.fail_after(60):
                await pub.flush()
    power = [r for r in published if r.sensor == "power"]
    start, end = power[4_321].t_ms, power[15_555].t_ms  # start included, end excluded
    calls = []
    async with dash.subscribe(room, live=False, page_size=1) as sub:
        with anyio.fail_after(120):
            got = await sub.history("power", start, end, progress=calls.append)
            buckets = await sub.window("power", start, end, 7)
            latest = await sub.latest("power")
            meta = sub.sensors["power"]
    assert [(r.t_ms, r.value) for r in got] == [(r.t_ms, r.value) for r in power[4_321:15_555]]
    assert all(r.unit == "W" and r.device == "meter" for r in got)
    assert len(calls) >= 4 and calls[-1].readings == len(got)
    # The window agrees with a direct computation over the raw readings.
    width = end - start
    for i, b in enumerate(buckets):
        lo, hi = start + math.ceil(i * width / 7), start + math.ceil((i + 1) * width / 7)
        vals = [r.value for r in power if lo <= r.t_ms < hi]
        assert (b.start_ms, b.end_ms, b.count) == (lo, hi, len(vals))
        assert (b.min, b.max, b.mean) == (min(vals), max(vals), math.fsum(vals) / len(vals))
    # Retained last value: in the sensor's state and from latest().
    assert latest is not None and (latest.t_ms, latest.value) == (power[-1].t_ms, power[-1].value)
    assert meta.last_value() == power[-1].value and meta.unit == "W" and meta.precision == 3
    # A dashboard that joins later gets it too, from the state alone.
    async with Client(dash.homeserver, dash_creds.user_id, password=dash_creds.password) as late:
        async with late.subscribe(room, live=False, latest_scan=0) as sub2:
            with anyio.fail_after(30):
                r = await sub2.latest("power")
    assert r is not None and (r.t_ms, r.value) == (power[-1].t_ms, power[-1].value)


async def test_a_demoted_device_keeps_what_it_published_while_it_could(make_user, make_client):
    """Events count by the power levels in force where they stand in the timeline,
    not by the room's current ones (PROTOCOL.md 1.3). A device publishes three
    batches and its sensor and device state, then is demoted. A live subscriber
    that joined before, and judges the last batch and the states only after the
    demotion has reached its client, keeps them all; so does a dashboard that
    joins afterwards, in history, window, latest, sensors and devices. A batch or
    state of the demoted device that reaches the live subscriber anyway is ignored."""
    dash, dev, room, *_ = await sensor_room(make_user, make_client, relaxed=True)
    t0 = now_ms() - 10_000
    published = [Reading("power", t0 + j * 100, j, "W", "meter") for j in range(15)]
    # buffer=1 and nobody iterating: the subscriber judges the first two batches,
    # then waits to hand the second one out; the third and the states wait unjudged.
    async with dash.subscribe(room, buffer=1) as live:
        async with dev.publisher(room, device="meter") as pub:
            pub.declare("power", unit="W")
            for k in range(3):
                for r in published[k * 5:(k + 1) * 5]:
                    pub.publish("power", r.value, t=r.t_ms)
                with anyio.fail_after(60):
                    await pub.flush()
        await dash.set_power_level(room, dev.user_id, 0)

        async def demoted() -> bool:
            pl = await dash.get_state(room, "m.room.power_levels") or {}
            return pl.get("users", {}).get(dev.user_id) == 0

        with anyio.fail_after(30):  # the client's sync loop is past every event of dev
            while not await demoted():  # noqa: ASYNC110 - the state cache, polled
                await anyio.sleep(0.02)
        assert live.statistics().batches <= 2  # the third is judged from here on
        got = await take(live, 15, deadline=30)
        assert [(r.t_ms, r.value, r.device) for r in got] == [
            (r.t_ms, r.value, r.device) for r in published
        ]
        # A batch of the owner after the demotion: once it is out, the subscriber
        # has followed the demotion too.
        async with dash.publisher(room, device="marker", presence=False) as mark:
            mark.publish("tick", 1)
        assert [r.device for r in await take(live, 1, deadline=30)] == ["marker"]
        assert live.devices["meter"].sender == dev.user_id
        assert live.sensors["power"].last_value() == 14
        # The demoted device's events are ignored should they reach the client.
        now = now_ms()
        forged = {"room_id": room, "sender": dev.user_id, "origin_server_ts": now}
        await live._on_event(RoomEvent(event_id="$forged-batch", type=READINGS,
                                       content=one_reading("meter", now), **forged))
        alive = to_content(DeviceState(online=True, since_ms=now, reason="birth"))
        await live._on_event(RoomEvent(event_id="$forged-state", type=DEVICE, content=alive,
                                       state_key="rogue", **forged))
        stats = live.statistics()
        assert (stats.forbidden, stats.batches) == (1, 4)
        assert "rogue" not in live.devices
        with anyio.move_on_after(0.5):
            r = await live.__anext__()
            pytest.fail(f"a reading of the demoted device came out: {r}")
    # A dashboard that joins after the demotion reads the past the same way.
    late = await make_client(await make_user("late", relaxed=True))
    await dash.invite(room, late.user_id)
    await late.join(room)
    async with late.subscribe(room, live=False, page_size=2) as cold:
        with anyio.fail_after(60):
            history = await cold.history("power", t0, t0 + 1_500)
            buckets = await cold.window("power", t0, t0 + 1_500, 3)
            latest = await cold.latest("power")
        stats = cold.statistics()
        assert [(r.t_ms, r.value) for r in history] == [(r.t_ms, r.value) for r in published]
        assert [(b.count, b.min, b.max) for b in buckets] == [(5, 0, 4), (5, 5, 9), (5, 10, 14)]
        assert latest is not None and (latest.t_ms, latest.value) == (t0 + 1_400, 14)
        assert cold.sensors["power"].last_value() == 14
        assert cold.devices["meter"].sender == dev.user_id
        assert stats.forbidden == 0


def one_reading(device: str, t_ms: int) -> dict[str, object]:
    """A valid batch content of one reading (seq far ahead: not a duplicate)."""
    enc = BatchEncoder()
    enc.add("power", t_ms, 99, unit="W")
    return enc.encode(device, 1_000, session=1)


DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys, anyio
    from mxsync import Client

    async def main(url, user, password, store, room):
        async with Client(url, user, password=password, store_path=store) as c:
            async with c.publisher(room, device="sensor-9", offline_after=3.0) as pub:
                await pub.wait_online()
                print("ONLINE", pub.presence_mode, flush=True)
                i = 0
                while True:
                    pub.publish("temp", 20 + i % 10)
                    i += 1
                    await anyio.sleep(0.2)

    anyio.run(main, *sys.argv[1:6])
    """
)


async def start_device(script: Path, url: str, creds: Credentials, store: Path,
                       room: str) -> subprocess.Popen[bytes]:
    """DEVICE_SCRIPT in a process of its own, once it says it is online with a will."""
    proc = subprocess.Popen([sys.executable, str(script), url, creds.user_id,
                             creds.password, str(store), room], stdout=subprocess.PIPE)
    try:
        with anyio.fail_after(60):
            line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
        assert line.split() == [b"ONLINE", b"will"]
    except BaseException:
        proc.kill()
        raise
    return proc


async def test_kill_9_device_shows_offline_within_the_delay(hs, make_user, make_client, tmp_path):
    dash, _dev, room, _, dev_creds = await sensor_room(make_user, make_client)
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    async with dash.subscribe(room) as sub:
        proc = await start_device(script, hs.url, dev_creds, tmp_path / "device.db", room)
        try:
            with anyio.fail_after(30):
                await sub.wait_device("sensor-9", online=True)
        finally:
            proc.kill()  # SIGKILL: no shutdown state, only the homeserver's last will
            proc.wait(timeout=10)
        killed = time.monotonic()
        with anyio.fail_after(3.0 + 5.0):
            st = await sub.wait_device("sensor-9", online=False)
        elapsed = time.monotonic() - killed
    assert st.reason == "last-will" and not st.inferred
    assert st.sender == dev_creds.user_id
    assert elapsed <= 3.0 + 5.0


# -- presence ----------------------------------------------------------------------------


async def test_clean_exit_marks_offline_at_once_and_cancels_the_will(make_user, make_client):
    dash, dev, room, *_ = await sensor_room(make_user, make_client)
    async with dash.subscribe(room) as sub, sub.device_changes() as changes:
        async with dev.publisher(room, device="pump", offline_after=60.0,
                                 description="cellar pump") as pub:
            with anyio.fail_after(30):
                await pub.wait_online()
                birth = await changes.receive()
            assert (birth.online, birth.reason, birth.description) == (True, "birth",
                                                                      "cellar pump")
            pub.publish("rpm", 1200)
            closing = time.monotonic()
        with anyio.fail_after(10):
            death = await changes.receive()
        assert time.monotonic() - closing < 10
    assert (death.online, death.reason, death.session) == (False, "shutdown", birth.session)
    assert (death.last_seq, death.description) == (0, "cellar pump")  # described offline too
    # No last will is left on the homeserver to mark the device offline again later.
    pending = await dev.http.call(api.delayed_events())
    assert pending["delayed_events"] == []


async def test_a_cancelled_publisher_still_says_goodbye_at_once(make_user, make_client):
    """Ctrl-C under anyio is a cancellation: the device must not wait for its will."""
    dash, dev, room, *_ = await sensor_room(make_user, make_client)
    async with dash.subscribe(room) as sub, sub.device_changes() as changes:
        with anyio.CancelScope() as scope:
            async with dev.publisher(room, device="fan", offline_after=60.0) as pub:
                with anyio.fail_after(30):
                    await pub.wait_online()
                    birth = await changes.receive()
                pub.publish("rpm", 900)
                closing = time.monotonic()
                scope.cancel()
                await anyio.sleep(1)  # a checkpoint: the cancellation lands here
        with anyio.fail_after(10):
            death = await changes.receive()
        assert time.monotonic() - closing < 10
    assert (birth.online, death.online, death.reason) == (True, False, "shutdown")


async def test_a_will_that_fired_while_alive_is_answered_with_a_new_birth(
    make_user, make_client
):
    """As after a partition longer than the delay: the homeserver sent the will."""
    dash, dev, room, *_ = await sensor_room(make_user, make_client)
    async with dash.subscribe(room) as sub:
        async with dev.publisher(room, device="cam", offline_after=3.0) as pub:
            with anyio.fail_after(30):
                await pub.wait_online()
                await sub.wait_device("cam", online=True)
            (will,) = (await dev.http.call(api.delayed_events()))["delayed_events"]
            await dev.http.call(api.delayed_event_action(will["delay_id"], "send"))
            with anyio.fail_after(30):
                dead = await sub.wait_device("cam", online=False)
                alive = await sub.wait_device("cam", online=True)
            assert (dead.reason, alive.reason) == ("last-will", "birth")
            (again,) = (await dev.http.call(api.delayed_events()))["delayed_events"]
            assert again["delay_id"] != will["delay_id"]


async def test_missed_heartbeats_mark_a_device_offline_and_a_batch_revives_it(
    make_user, make_client
):
    """Without a last will (a homeserver without MSC4140), subscribers infer offline."""
    dash, dev, room, *_ = await sensor_room(make_user, make_client)
    async with dash.subscribe(room, check_interval=0.1) as sub:
        alive = DeviceState(online=True, since_ms=now_ms(), heartbeat_ms=1000, reason="birth")
        await dev.send(room, DEVICE, to_content(alive), state_key="old-plc")
        with anyio.fail_after(30):
            await sub.wait_device("old-plc", online=True)
            started = time.monotonic()
            st = await sub.wait_device("old-plc", online=False)
        assert (st.reason, st.inferred) == ("heartbeat-timeout", True)
        assert 1.8 <= time.monotonic() - started < 4.0
        async with dev.publisher(room, device="old-plc", presence=False) as pub:
            pub.publish("level", 3)
        with anyio.fail_after(30):
            st = await sub.wait_device("old-plc", online=True)
        assert (st.reason, st.inferred) == ("batch", True)


# -- nothing lost ------------------------------------------------------------------------------

RESTART_SCRIPT = textwrap.dedent(
    """
    import sys, anyio, random, json, msgspec
    from mxsync import Client

    async def main(url, user, password, store, room, n):
        rng = random.Random(7)
        async with Client(url, user, password=password, store_path=store) as c:
            async with c.publisher(room, device="logger", window=1, max_age=3600,
                                   max_bytes=8192, presence=False) as pub:
                for i in range(int(n)):
                    pub.publish("noise", rng.randrange(-2**20, 2**20))
                    if i % 1000 == 0:
                        await anyio.lowlevel.checkpoint()
                await pub.persist()
                with anyio.fail_after(60):  # the rate limit piles sealed batches up
                    while pub.statistics().sealed_pending < 2:
                        await anyio.sleep(0.05)
                print(json.dumps(msgspec.to_builtins(pub.statistics())), flush=True)
                await anyio.sleep(3600)

    anyio.run(main, *sys.argv[1:7])
    """
)


async def test_kill_9_then_restart_delivers_every_reading_once(
    hs, make_user, make_client, tmp_path
):
    """The buffer is persisted: killed with readings sealed, in flight and unsealed."""
    import json

    n = 30_000
    dash, _dev, room, _, dev_creds = await sensor_room(make_user, make_client)
    store = tmp_path / "logger.db"
    script = tmp_path / "logger.py"
    script.write_text(RESTART_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), hs.url, dev_creds.user_id, dev_creds.password,
         str(store), room, str(n)],
        stdout=subprocess.PIPE,
    )
    try:
        with anyio.fail_after(60):
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
        before = json.loads(line)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert before["published"] == n
    # Rate limited: it died with batches sealed and readings unsealed (some maybe in flight).
    assert before["sealed_pending"] > 0 and before["unsealed"] > 0
    await hs.override_ratelimit(dev_creds.user_id)
    rng = random.Random(7)
    want = [rng.randrange(-2**20, 2**20) for _ in range(n)]
    async with Client(hs.url, dev_creds.user_id, password=dev_creds.password,
                      store_path=store) as again:
        async with again.publisher(room, device="logger", presence=False) as pub:
            assert pub.statistics().restored + pub.statistics().sealed_pending > 0
            with anyio.fail_after(120):
                await pub.flush()
    # The homeserver's own history: every batch once, seq without gaps, values in order.
    seqs, values = [], []
    token = None
    with anyio.fail_after(60):
        while True:
            page = await dash.messages(room, token, direction="f", types=[READINGS])
            for ev in page.events:
                readings = decode_batch(ev.content)
                seqs.append(readings[0].seq)
                values.extend(r.value for r in readings)
            if not page.events or page.end is None:
                break
            token = page.end
    assert seqs == list(range(len(seqs)))
    assert values == want


async def test_the_seam_of_a_replay_is_no_duplicate_but_a_batch_posted_again_is(
    make_user, make_client
):
    """start="earliest" while the device keeps publishing: the batches that both the
    replay of history and the live stream bring (the seam) are handed out once and
    counted as overlap, not as duplicates; the same batch posted again (another
    event with the same device, session and seq) is a duplicate."""
    dash, dev, room, *_ = await sensor_room(make_user, make_client, relaxed=True)
    async with dev.publisher(room, device="d", presence=False, max_age=0.01) as pub:
        for i in range(10):  # history: ten batches, one reading each
            pub.publish("count", i)
            await pub.flush()
        published = 10
        stop = anyio.Event()

        async def keep_publishing() -> None:
            # One batch every round trip (~40 ms) while the subscriber starts and
            # replays: some are sent after it registered and before its replay
            # reached the room's end, so both bring them.
            nonlocal published
            while not stop.is_set():
                pub.publish("count", published)
                published += 1
                await pub.flush()

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_publishing)
            async with dash.subscribe(room, start="earliest") as sub:
                got: list[int] = []
                with anyio.fail_after(60):
                    async for r in sub:
                        got.append(r.value)
                        if len(got) >= 40:
                            stop.set()
                        if stop.is_set() and len(got) >= published:
                            break
                seam = sub.statistics()
                # Every reading once, in order, across the seam.
                assert got == list(range(len(got))) and len(got) == published
                print(f"seam: {seam}")
                assert seam.overlap > 0, "the replay and the live stream did not overlap"
                assert seam.duplicates == 0 and seam.gaps == 0

                # A real duplicate: batch 3 posted again as another event.
                page = await dash.messages(room, None, direction="f", limit=20,
                                           types=[READINGS])
                again = next(ev.content for ev in page.events
                             if decode_batch(ev.content)[0].value == 3)
                await dev.request(api.send_event(room, READINGS, "posted-again", again))
                with anyio.fail_after(30):
                    while sub.statistics().duplicates < 1:  # noqa: ASYNC110 - a counter
                        await anyio.sleep(0.05)
                extra: list[Reading] = []
                with anyio.move_on_after(1):
                    async for r in sub:
                        extra.append(r)
                after = sub.statistics()
    assert extra == []  # nothing handed out twice
    assert after.duplicates == 1 and after.overlap == seam.overlap


async def test_overflow_policies_block_or_drop_oldest_with_a_visible_gap(
    make_user, make_client
):
    """While the homeserver is unreachable the buffer fills; each policy does what it says."""
    dash, dev, room, *_ = await sensor_room(make_user, make_client, relaxed=True)
    real = dev.nio.homeserver
    rng = random.Random(3)
    async with dash.subscribe(room) as sub:
        # -- block: publish() refuses, nothing is lost, publish_wait() waits for room.
        async with dev.publisher(room, device="blocky", presence=False, max_buffered=5_000,
                                 max_bytes=4096) as pub:
            dev.nio.homeserver = "http://127.0.0.1:9"
            sent = []
            with pytest.raises(BufferFull):
                for _ in range(20_000):
                    v = rng.randrange(10**9)
                    pub.publish("x", v)
                    sent.append(v)
            assert pub.buffered == 5_000 and pub.statistics().published == len(sent)
            dev.nio.homeserver = real
            with anyio.fail_after(60):
                for _ in range(3_000):
                    v = rng.randrange(10**9)
                    await pub.publish_wait("x", v)
                    sent.append(v)
                await pub.flush()
        got = await take(sub, len(sent), deadline=60)
        assert [r.value for r in got] == sent
        # -- drop_oldest: publish() never refuses, the oldest batches go, seq shows the gap.
        async with dev.publisher(room, device="droppy", presence=False, max_buffered=5_000,
                                 max_bytes=4096, overflow="drop_oldest") as pub:
            dev.nio.homeserver = "http://127.0.0.1:9"
            sent = []
            for i in range(30_000):
                v = rng.randrange(10**9)
                pub.publish("y", v)
                sent.append(v)
                if i % 500 == 0:
                    await anyio.lowlevel.checkpoint()
            stats = pub.statistics()
            assert stats.dropped > 0 and pub.buffered <= 2 * 5_000
            dev.nio.homeserver = real
            with anyio.fail_after(60):
                await pub.flush()
            stats = pub.statistics()
        got = await take(sub, len(sent) - stats.dropped, deadline=60)
    values = [r.value for r in got]
    assert len(values) == len(sent) - stats.dropped
    it = iter(sent)
    assert all(v in it for v in values)  # a subsequence: order kept, nothing invented
    # Every seq was either delivered or dropped; the subscriber counts the holes it sees
    # (drops before the first batch it saw are not holes to it, but seq does not start at 0).
    seqs = sorted({r.seq for r in got})
    assert len(seqs) + stats.dropped_batches == stats.next_seq
    assert sub.statistics().missing_batches == seqs[-1] - seqs[0] + 1 - len(seqs)
    assert seqs != list(range(len(seqs)))


# -- bad input -----------------------------------------------------------------------------


async def test_bad_input_is_a_clear_local_error(make_user, make_client):
    dash, dev, room, *_ = await sensor_room(make_user, make_client)
    with pytest.raises(ConfigError, match="device id"):
        dev.publisher(room, device="bad device")
    with pytest.raises(ConfigError, match="room id"):
        dev.publisher("#alias:localhost", device="d")
    with pytest.raises(ConfigError, match="overflow"):
        dev.publisher(room, device="d", overflow="newest")
    pub = dev.publisher(room, device="d", presence=False)
    with pytest.raises(RuntimeError, match="async with"):
        pub.publish("x", 1)
    async with pub:
        cases = [
            (("", 1), {}, "sensor id"),
            (("-x", 1), {}, "sensor id"),
            (("a b", 1), {}, "sensor id"),
            (("s" * 129, 1), {}, "sensor id"),
            (("x", None), {}, "type NoneType"),
            (("x", [1]), {}, "type list"),
            (("x", b"raw"), {}, "type bytes"),
            (("x", 1 + 2j), {}, "type complex"),
            (("x", float("nan")), {}, "not finite"),
            (("x", float("inf")), {}, "not finite"),
            (("x", "é" * 129), {}, "at most 256"),
            (("x", 2**53), {}, "2\\*\\*53"),
            (("x", 0.1 + 0.2), {}, "needs 17 decimals"),
            (("x", 1), {"unit": ""}, "unit"),
            (("x", 1), {"unit": "\n"}, "unit"),
            (("x", 1), {"t": -1}, "t_ms"),
            (("x", 1), {"t": 1.5}, "t_ms"),
        ]
        for args, kw, msg in cases:
            with pytest.raises(ConfigError, match=msg):
                pub.publish(*args, **kw)
        with pytest.raises(ConfigError, match="precision"):
            pub.declare("x", precision=10)
        with pytest.raises(ConfigError):
            pub.publish_many([Reading("ok", now_ms(), 1), Reading("bad id", now_ms(), 2)])
        assert pub.statistics().published == 0 and pub.buffered == 0
        pub.declare("x", precision=1)
        pub.publish("x", 0.1 + 0.2)  # rounded to the declared precision: fine
        assert pub.statistics().published == 1


async def test_malformed_batches_are_skipped_logged_once_and_harmless(
    make_user, make_client, caplog
):
    """A writer sends garbage org.mxsync.readings contents; the subscriber keeps going."""
    dash, dev, room, *_ = await sensor_room(make_user, make_client)
    good = {"device": "d", "seq": 0, "t0_ms": now_ms(), "compression": "none",
            "series": [{"sensor": "s", "kind": "int", "n": 1}], "data": "AAI="}
    garbage = [
        {"hello": "world"},
        {**good, "seq": "1"},
        {**good, "data": "!!!!"},
        {**good, "compression": "zlib"},  # not a zlib stream
        {**good, "v": 2},
        {**good, "series": [{"sensor": "s", "kind": "int", "n": 5}]},  # data too short
    ]
    caplog.set_level(logging.DEBUG, logger="mxsync.streams")
    async with dash.subscribe(room) as sub:
        handles = [await dev.send(room, READINGS, content) for content in garbage]
        with anyio.fail_after(60):
            for h in handles:
                await h.wait()
        async with dev.publisher(room, device="d2", presence=False) as pub:
            pub.publish("after", 42)
        (r,) = await take(sub, 1, deadline=60)
        assert (r.sensor, r.value) == ("after", 42)
        assert sub.statistics().malformed == len(garbage)
    warnings = [rec for rec in caplog.records
                if rec.levelno == logging.WARNING and "malformed" in rec.getMessage()]
    assert len(warnings) == 1 and dev.user_id in warnings[0].getMessage()


# -- CLI ------------------------------------------------------------------------------------


async def test_cli_publish_then_history_csv(hs, make_user, make_client, tmp_path):
    dash, dev, room, dash_creds, dev_creds = await sensor_room(make_user, make_client)
    env = {**os.environ, "MXSYNC_HOMESERVER": hs.url}

    def run(creds, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "mxsync", "sensor", *args, "--user", creds.user_id,
             "--password", creds.password, "--store", str(tmp_path / f"{creds.device_id}.db")],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    with anyio.fail_after(200):
        await anyio.to_thread.run_sync(run, dev_creds, "publish", room, "room1/temp", "21.375",
                                       "--precision", "2", "--unit", "Cel")
        out = await anyio.to_thread.run_sync(run, dash_creds, "history", room, "room1/temp",
                                             "--since", "1h", "--csv")
        lines = out.strip().splitlines()
        assert lines[0] == "t_ms,time,sensor,value,unit,device"
        (row,) = lines[1:]
        assert row.split(",")[2:] == ["room1/temp", "21.38", "Cel", "cli"]
        # tail: the retained last value first, then what arrives.
        tail = subprocess.Popen(
            [sys.executable, "-m", "mxsync", "sensor", "tail", room, "--user", dash_creds.user_id,
             "--password", dash_creds.password, "--store", str(tmp_path / "tail.db")],
            env=env, cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        try:
            first = await anyio.to_thread.run_sync(tail.stdout.readline)
            assert first.split()[1:] == ["room1/temp", "21.38", "Cel", "[cli]", "(last)"]
            await anyio.to_thread.run_sync(run, dev_creds, "publish", room, "room1/door", "true")
            line = await anyio.to_thread.run_sync(tail.stdout.readline)
            assert line.split()[1:] == ["room1/door", "true", "[cli]"]
        finally:
            tail.kill()
            tail.wait(timeout=10)


def test_cli_value_and_time_parsing():
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("42") == 42 and type(parse_value("42")) is int
    assert parse_value("4.25") == 4.25 and parse_value("auto") == "auto"
    assert parse_value("42", "float") == 42.0 and type(parse_value("42", "float")) is float
    assert parse_value("1", "str") == "1"
    with pytest.raises(ConfigError):
        parse_value("x", "int")
    assert parse_time("1h", now_ms=10_000_000) == 10_000_000 - 3_600_000
    assert parse_time("90s", now_ms=100_000) == 10_000
    assert parse_time("2026-01-01T00:00:00Z") == 1_767_225_600_000
    assert parse_time("1767225600000") == 1_767_225_600_000
    with pytest.raises(ConfigError):
        parse_time("yesterday")


def test_aggregate_buckets_cover_the_range_exactly():
    rs = [Reading("s", t, v) for t, v in [(0, 1), (3, 2.5), (4, True), (9, 7), (10, 100)]]
    b = aggregate(rs, 0, 10, 3)
    assert [(x.start_ms, x.end_ms, x.count) for x in b] == [(0, 4, 2), (4, 7, 1), (7, 10, 1)]
    assert (b[0].min, b[0].max, b[0].mean) == (1, 2.5, 1.75)
    assert (b[1].min, b[1].mean, b[1].numbers, b[1].count) == (None, None, 0, 1)  # a bool
    assert b[0].numbers == 2  # is counted, never averaged
    strs = aggregate([Reading("s", 1, "on")], 0, 10, 2)
    assert strs[0].count == 1 and strs[0].mean is None and strs[1].count == 0
    with pytest.raises(ConfigError):
        aggregate(rs, 0, 10, 0)
