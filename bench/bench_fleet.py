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
  ``rate_limited: false``): N devices, each its own user, one client; R readings
  per device published at once; until a dashboard has all N * R
  (``gateway_devices``, ``gateway_readings``; ``gateway_setup_s``: registering,
  inviting and joining the N users and opening their publishers).

Run alone: ``python -m bench.bench_fleet [--quick]`` (starts its own Synapse).
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


async def gateway_rate(devices: int, readings: int, tmp: Path) -> dict[str, float]:
    from contextlib import AsyncExitStack

    from mxsync import Reading
    from mxsync.protocol import api

    reg = Registration.generate("localhost")
    reg_file = reg.write(tmp / "fleet.yaml")
    async with DevServer(tmp / "gw-synapse", rate_limits="default",
                         app_services=[reg_file]) as hs:
        creds = await hs.register("gdash")
        async with Client(hs.url, creds.user_id, password=creds.password,
                          store_path=tmp / "gdash.db") as dash, \
                Client(hs.url, reg.sender, access_token=reg.as_token,
                       store_path=tmp / "gw.db", encryption=False) as bot:
            room = await dash.create_room("gateway bench", invite=[reg.sender])
            await dash.set_power_level(room, reg.sender, 100)
            await bot.request(api.join(room))
            gw = FleetGateway(bot, reg, room)
            names = [f"g{i:04d}" for i in range(devices)]
            setup = time.perf_counter()
            await gw.add_devices(names)
            async with AsyncExitStack() as stack:
                pubs = [await stack.enter_async_context(gw.publisher(d, offline_after=300))
                        for d in names]
                setup = time.perf_counter() - setup
                async with dash.subscribe(room, buffer=4096) as sub:
                    t0 = int(time.time() * 1000) - readings
                    start = time.perf_counter()
                    for i, pub in enumerate(pubs):
                        pub.publish_many(Reading("v", t0 + j, i + j) for j in range(readings))
                    total, got = devices * readings, 0
                    with anyio.fail_after(1800):
                        async for _ in sub:
                            got += 1
                            if got >= total:
                                break
                    rate = total / (time.perf_counter() - start)
    return {"gateway_readings_per_s": rate, "gateway_devices": devices,
            "gateway_readings": devices * readings, "gateway_setup_s": setup}


async def run(hs: DevServer, *, quick: bool) -> dict[str, float]:
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="mxsync-bench-fleet-") as d:
        tmp = Path(d)
        async with Mosquitto(tmp / "mosquitto") as broker:
            alone = await anyio.to_thread.run_sync(_mqtt_once, broker.port, n, 100)
            bridged = await through_bridge(hs, broker.port, n, tmp)
        gateway = await gateway_rate(*((50, 2_000) if quick else (100, 10_000)), tmp)
    return {"bridge_readings_per_s": bridged, "bridge_readings_per_s_mqtt": alone,
            "x_bridge_mqtt": bridged / alone, **gateway}


async def _main(quick: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="mxsync-bench-hs-") as state:
        async with DevServer(state, rate_limits="default") as hs:
            result = await run(hs, quick=quick)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    anyio.run(_main, args.quick)
