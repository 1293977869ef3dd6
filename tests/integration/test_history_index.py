"""History is exact by reading time, whatever the upload delay (real Synapse).

A device uploads now readings stamped hours and a day in the past (as one that
buffered through an outage would). ``history`` and ``window`` over those ranges
return exactly them, from the subscriber's local batch index
(streams/index.py); a second identical query makes no ``/messages`` request
(requests counted at the client's Http), and a client started again with the
same store walks only back to where its index stopped.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import anyio
import pytest

from mxsync import Client

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

HOUR = 3_600_000
DAY = 24 * HOUR


def count_requests(client: Client) -> Counter[str]:
    """Count the client's requests by what they are (``messages``, ``context``, ...)."""
    seen: Counter[str] = Counter()
    http = client.http
    real_call, real_list = http.call, http.call_list

    async def call(req: Any, **kw: Any) -> Any:
        seen[req.what] += 1
        return await real_call(req, **kw)

    async def call_list(req: Any, **kw: Any) -> Any:
        seen[req.what] += 1
        return await real_list(req, **kw)

    http.call = call  # type: ignore[method-assign]
    http.call_list = call_list  # type: ignore[method-assign]
    return seen


async def test_readings_uploaded_a_day_late_are_found_and_a_repeat_makes_no_request(
    hs, make_user, make_client, tmp_path
):
    dev_c = await make_user("late", relaxed=True)
    dash_c = await make_user("dash", relaxed=True)
    dev = await make_client(dev_c)
    room = await dev.create_room("late", invite=[dash_c.user_id])
    store = tmp_path / "dash.db"
    dash = await make_client(dash_c, store=store)
    await dash.join(room)
    now = int(time.time() * 1000)
    ranges = {"day": now - DAY, "hours": now - 5 * HOUR, "recent": now - 60_000}
    want: dict[str, list[tuple[int, int]]] = {k: [] for k in ranges}

    async with dash.subscribe(room) as sub:
        # Some readings before the subscriber's first query (found by the walk) ...
        async with dev.publisher(room, device="buffered", presence=False) as pub:
            for k, t0 in ranges.items():
                for i in range(6):
                    pub.publish("temp", 1000 * len(want[k]) + i, t=t0 + i * 1000)
                    want[k].append((t0 + i * 1000, 1000 * len(want[k]) + i))
                await pub.flush()  # a batch per range
        requests = count_requests(dash)
        with anyio.fail_after(60):
            first = {k: await sub.history("temp", t0 - 10_000, t0 + 60_000)
                     for k, t0 in ranges.items()}
        assert {k: [(r.t_ms, r.value) for r in v] for k, v in first.items()} == want
        walked = requests["messages"]
        assert walked >= 1  # the one backwards walk
        # ... and some uploaded a day late while it runs (found through the live stream).
        async with dev.publisher(room, device="buffered2", presence=False) as pub:
            for i in range(4):
                pub.publish("temp", -i, t=ranges["day"] + 30_000 + i)
            await pub.flush()
        late = [(ranges["day"] + 30_000 + i, -i) for i in range(4)]
        expect_day = sorted(want["day"] + late)
        with anyio.fail_after(30):
            while len(await sub.history(  # noqa: ASYNC110 - a query, polled
                    "temp", ranges["day"] - 10_000, ranges["day"] + 60_000)) < len(expect_day):
                await anyio.sleep(0.1)
        requests.clear()
        again = await sub.history("temp", ranges["day"] - 10_000, ranges["day"] + 60_000)
        assert [(r.t_ms, r.value) for r in again] == expect_day
        buckets = await sub.window("temp", ranges["day"] - 10_000, ranges["day"] + 60_000, 7)
        assert sum(b.count for b in buckets) == len(expect_day)
        assert min(b.min for b in buckets if b.min is not None) == -3
        # Repeated queries: no /messages, nothing at all (the batches are cached).
        assert requests["messages"] == 0, requests
        assert requests["context"] == 0, requests
        first_stats = sub.statistics()
        assert first_stats.index_fetched == 4  # each batch once, then from the cache
        # Nothing outside the range, nothing of another sensor.
        assert await sub.history("temp", now - 3 * DAY, now - 2 * DAY) == []
        assert await sub.history("humidity", now - 2 * DAY, now) == []

    # A new client on the same store: the index survived, the walk stops at its frontier.
    dash2 = await make_client(dash_c, store=store)
    requests = count_requests(dash2)
    async with dash2.subscribe(room) as sub2:
        with anyio.fail_after(60):
            got = await sub2.history("temp", ranges["hours"] - 10_000, ranges["hours"] + 60_000)
        assert [(r.t_ms, r.value) for r in got] == want["hours"]
        stats = sub2.statistics()
    # It read nothing older than the frontier the first client's live stream left
    # (the late batch), where the first walk read every batch of the room.
    assert stats.index_walk_events == 0, stats
    assert first_stats.index_walk_events >= 3, first_stats
    assert requests["messages"] <= 3, requests  # levels listing, one page, levels before it


async def test_sensor_kinds_refuse_mismatches_and_window_never_averages_booleans(
    hs, make_user, make_client
):
    from mxsync import ConfigError

    dev = await make_client(await make_user("kinds", relaxed=True))
    room = await dev.create_room("kinds")
    now = int(time.time() * 1000)
    async with dev.subscribe(room, live=False) as sub:
        async with dev.publisher(room, device="k", presence=False) as pub:
            pub.declare("temp", kind="number", precision=1, unit="Cel")
            pub.declare("mode", kind="enum", values=["auto", "off"])
            for bad_sensor, bad in (("temp", "21.5"), ("temp", True), ("mode", "turbo")):
                with pytest.raises(ConfigError, match=f"{bad_sensor}"):
                    pub.publish(bad_sensor, bad, t=now)
            for i in range(4):
                pub.publish("temp", 20 + i / 2, t=now - 10_000 + i)
                pub.publish("door", i % 2 == 0, t=now - 10_000 + i)  # inferred: boolean
                pub.publish("mode", "auto", t=now - 10_000 + i)
            with pytest.raises(ConfigError, match="'door' is a boolean sensor"):
                pub.publish("door", 1, t=now)
            await pub.flush()
        with anyio.fail_after(60):
            (temp,) = await sub.window("temp", now - 20_000, now, 1)
            (door,) = await sub.window("door", now - 20_000, now, 1)
            while {"temp", "mode", "door"} - set(sub.sensors):  # noqa: ASYNC110 - state, polled
                await anyio.sleep(0.05)
        # What each sensor measures travels in its state (org.mxsync.sensor).
        meta = sub.sensors
        assert (meta["temp"].sensor_kind, meta["temp"].unit) == ("number", "Cel")
        assert (meta["mode"].sensor_kind, meta["mode"].values) == ("enum", ["auto", "off"])
        assert meta["door"].sensor_kind == "boolean"
    assert (temp.count, temp.numbers, temp.min, temp.max, temp.mean) == (4, 4, 20.0, 21.5, 20.75)
    assert (door.count, door.numbers, door.min, door.mean) == (4, 0, None, None)
