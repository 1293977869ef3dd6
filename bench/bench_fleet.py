"""The MQTT bridge: readings/s from an MQTT device to a Matrix subscriber, next to
Mosquitto alone, measured in the same run on the same broker.

- ``bridge_readings_per_s_mqtt``: the baseline. paho-mqtt publisher -> Mosquitto ->
  paho-mqtt subscriber, QoS 1, one message per reading, 100 in flight
  (``bench_streams._mqtt_once``).
- ``bridge_readings_per_s``: the same publisher, one JSON message per reading
  (``mxsync/bench1/data`` ``{"t": ms, "v": i}``, QoS 1, 100 in flight) -> Mosquitto ->
  MqttBridge (aiomqtt, one Matrix client, relaxed user) -> Synapse -> a Subscriber of
  another client; from the first publish until the subscriber has every reading.
- ``x_bridge_mqtt``: the ratio of the two.
- ``gateway_readings_per_s``: the appservice gateway (its own Synapse with the
  registration installed, Synapse's default rate limits, device users exempt by
  ``rate_limited: false``): N devices (1,000; ``--quick`` 100), each its own
  user, one client, spread by the gateway over rooms of 50; R readings (1,000)
  per device published at once; until a dashboard (one subscriber per room, one
  client) has all N * R. ``gateway_events_per_s``: the readings events (batches)
  that carried them. ``gateway_add_devices_s``: registering the users, creating
  the rooms and joining; ``gateway_setup_s``: that plus opening the publishers
  until every birth is stored and every will armed.
- Baselines on the same Synapse, same run: ``plain_readings_per_s``, one
  ordinary user's Publisher (held to 0.2 events/s after a burst of 10) with
  the same readings at once (all N * R; ``--quick`` 300,000, within its burst)
  (``x_gateway_plain``: the ratio); and
  ``ceiling_events_per_s_rate_limited_users``, what the same N devices could
  send as ordinary users, N x 0.2 events/s (``x_gateway_events_ceiling``).

Run alone: ``python -m bench.bench_fleet [--quick] [--gateway-only]`` (starts its own
Synapse).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from mxsync import Client
from mxsync.dev import DevServer
from mxsync.dev.mosquitto import Mosquitto
from mxsync.fleet import MqttBridge
from mxsync.fleet.appservice import FleetGateway, Registration

from .bench_streams import _mqtt_once

_OUTSTANDING = 20_000


def _publish_json(port: int, n: int, t0: int) -> None:
    import paho.mqtt.client as mqtt

    acked = threading.Condition()
    n_acked = 0

    def on_publish(*args: Any) -> None:
        nonlocal n_acked
        with acked:
            n_acked += 1
            acked.notify()

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bp{uuid.uuid4().hex[:6]}")
    pub.max_inflight_messages_set(100)
    pub.max_queued_messages_set(0)
    pub.on_publish = on_publish
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        pub.publish("mxsync/bench1/status", "online", qos=1).wait_for_publish(10)
        for i in range(n):
            if i - n_acked > _OUTSTANDING:
                with acked:
                    acked.wait_for(lambda i=i: i - n_acked <= _OUTSTANDING // 2, 60)
            pub.publish("mxsync/bench1/data", json.dumps({"t": t0 + i, "v": i}), qos=1)
        with acked:
            acked.wait_for(lambda: n_acked >= n + 1, 600)
    finally:
        pub.loop_stop()
        pub.disconnect()


async def through_bridge(hs: DevServer, port: int, n: int, tmp: Path) -> float:
    dash_c, gw_c = await hs.register("bdash"), await hs.register("bgw")
    for c in (dash_c, gw_c):
        await hs.override_ratelimit(c.user_id)
    async with Client(hs.url, dash_c.user_id, password=dash_c.password,
                      store_path=tmp / "bdash.db") as dash, \
            Client(hs.url, gw_c.user_id, password=gw_c.password,
                   store_path=tmp / "bgw.db") as gw:
        room = await dash.create_room("bridge bench", invite=[gw_c.user_id])
        await gw.join(room)
        async with dash.subscribe(room, buffer=4096) as sub, \
                MqttBridge(gw, room, port=port, sparkplug=False,
                           publisher={"max_age": 0.2}):
            t0 = int(time.time() * 1000) - n
            start = time.perf_counter()
            got = 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, _publish_json, port, n, t0)
                with anyio.fail_after(900):
                    async for _ in sub:
                        got += 1
                        if got >= n:
                            break
            return n / (time.perf_counter() - start)


async def _count(subs: list[Any], total: int, deadline: float) -> None:
    """Until the subscribers of ``subs`` have ``total`` readings between them."""
    got = 0
    send, receive = anyio.create_memory_object_stream[int](1024)

    async def pump(sub: Any) -> None:
        async for _ in sub:
            await send.send(1)

    async with anyio.create_task_group() as tg:
        for sub in subs:
            tg.start_soon(pump, sub)
        with anyio.fail_after(deadline):
            async for _ in receive:
                got += 1
                if got >= total:
                    break
        tg.cancel_scope.cancel()


async def plain_publisher_rate(hs: DevServer, readings: int, tmp: Path) -> dict[str, float]:
    """The baseline: one ordinary user's Publisher under the same default limits
    (0.2 events/s after a burst of 10), ``readings`` readings at once, until a
    dashboard of another user has them all."""
    from mxsync import Reading

    pub_c, dash_c = await hs.register("gplain"), await hs.register("gplaindash")
    async with Client(hs.url, pub_c.user_id, password=pub_c.password,
                      store_path=tmp / "gplain.db") as pc, \
            Client(hs.url, dash_c.user_id, password=dash_c.password,
                   store_path=tmp / "gplaindash.db") as dc:
        room = await pc.create_room("plain publisher", invite=[dash_c.user_id])
        await dc.join(room)
        async with dc.subscribe(room, buffer=4096) as sub, \
                pc.publisher(room, device="plain", max_age=0.5,
                             max_buffered=2 * readings) as pub:
            t0 = int(time.time() * 1000) - readings
            start = time.perf_counter()
            pub.publish_many(Reading("v", t0 + j, j) for j in range(readings))
            await _count([sub], readings, 1800)
            elapsed = time.perf_counter() - start
            events = pub.statistics().batches_sent
    return {"plain_readings_per_s": readings / elapsed, "plain_events": events,
            "plain_events_per_s": events / elapsed}


async def gateway_rate(devices: int, readings: int, tmp: Path, *,
                       room_size: int = 50, plain: int | None = None) -> dict[str, float]:
    import logging
    from contextlib import AsyncExitStack

    from mxsync import Reading

    # The gateway's setup phases (register, place, join), on stderr.
    logging.getLogger("mxsync.fleet").setLevel(logging.INFO)
    logging.getLogger("mxsync.fleet").addHandler(logging.StreamHandler())
    reg = Registration.generate("localhost")
    reg_file = reg.write(tmp / "fleet.yaml")
    async with DevServer(tmp / "gw-synapse", rate_limits="default",
                         app_services=[reg_file]) as hs:
        baseline = await plain_publisher_rate(hs, plain or devices * readings, tmp)
        creds = await hs.register("gdash")
        async with Client(hs.url, creds.user_id, password=creds.password,
                          store_path=tmp / "gdash.db") as dash, \
                Client(hs.url, reg.sender, access_token=reg.as_token,
                       store_path=tmp / "gw.db", encryption=False) as bot:
            gw = FleetGateway(bot, reg, room_size=room_size, operators=[creds.user_id])
            names = [f"g{i:04d}" for i in range(devices)]
            setup = time.perf_counter()
            await gw.add_devices(names)
            added = time.perf_counter() - setup
            async with AsyncExitStack() as stack:
                for room in gw.rooms:
                    await dash.join(room)
                subs = [await stack.enter_async_context(dash.subscribe(room, buffer=1024))
                        for room in gw.rooms]
                by_device = await stack.enter_async_context(gw.publishers(names, max_age=0.5))
                pubs = [by_device[d] for d in names]
                for pub in pubs:  # births stored, wills armed
                    await pub.wait_online()
                setup = time.perf_counter() - setup
                t0 = int(time.time() * 1000) - readings
                start = time.perf_counter()
                for i, pub in enumerate(pubs):
                    pub.publish_many(Reading("v", t0 + j, i + j) for j in range(readings))
                await _count(subs, devices * readings, 1800)
                elapsed = time.perf_counter() - start
                stats = [p.statistics() for p in pubs]
                events = sum(st.batches_sent for st in stats)
                rebirths = sum(st.will_rebirths for st in stats)
    ceiling = devices * 0.2  # the same devices as ordinary users: rc_message 0.2/s each
    return {"gateway_readings_per_s": devices * readings / elapsed,
            "gateway_devices": devices, "gateway_rooms": len(gw.rooms),
            "gateway_readings": devices * readings, "gateway_events": events,
            "gateway_events_per_s": events / elapsed,
            "gateway_add_devices_s": added, "gateway_setup_s": setup,
            "gateway_will_rebirths": rebirths,
            "ceiling_events_per_s_rate_limited_users": ceiling,
            "x_gateway_events_ceiling": events / elapsed / ceiling,
            **baseline,
            "x_gateway_plain": devices * readings / elapsed / baseline["plain_readings_per_s"]}


async def gateway_rate_for(quick: bool, tmp: Path) -> dict[str, float]:
    # quick: 100 devices; the baseline gets 300,000 readings (a batch holds
    # ~60,000, so these fit in its burst of 10 events; the full run's 1,000,000
    # go past it).
    if quick:
        return await gateway_rate(100, 1_000, tmp, plain=300_000)
    return await gateway_rate(1_000, 1_000, tmp)


async def run(hs: DevServer, *, quick: bool) -> dict[str, float]:
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="mxsync-bench-fleet-") as d:
        tmp = Path(d)
        async with Mosquitto(tmp / "mosquitto") as broker:
            alone = await anyio.to_thread.run_sync(_mqtt_once, broker.port, n, 100)
            bridged = await through_bridge(hs, broker.port, n, tmp)
        gateway = await gateway_rate_for(quick, tmp)
    return {"bridge_readings_per_s": bridged, "bridge_readings_per_s_mqtt": alone,
            "x_bridge_mqtt": bridged / alone, **gateway}


async def _main(quick: bool, gateway_only: bool = False) -> None:
    if gateway_only:
        with tempfile.TemporaryDirectory(prefix="mxsync-bench-fleet-") as d:
            print(json.dumps(await gateway_rate_for(quick, Path(d)), indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="mxsync-bench-hs-") as state:
        async with DevServer(state, rate_limits="default") as hs:
            result = await run(hs, quick=quick)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--gateway-only", action="store_true",
                        help="only the appservice gateway and its baselines")
    args = parser.parse_args()
    anyio.run(_main, args.quick, args.gateway_only)
