"""Benchmark of sensor streams: readings/s end to end and bytes per reading.

Measured in one run, on one machine:

- ``readings_per_s``: one Publisher -> Synapse -> one Subscriber, users with the
  rate limit lifted (as an operator does for a bridge), from the first
  ``publish`` until the subscriber holds the last reading (the readings are
  made before the clock starts, as the MQTT baseline's payloads are);
- ``readings_per_s_default``: the same under Synapse's default limits (0.2
  events/s, burst 10), sustained: counted over the batches that arrive after
  the burst is spent, with a producer that always has more to send;
- ``readings_per_s_naive``: one Matrix event per reading on the same Synapse
  (relaxed user, the engine's 8 concurrent sends per room);
  ``readings_per_s_naive_default_ceiling`` is what one event per reading can
  sustain under the default limit: rc_message, 0.2 events/s (not run);
- ``readings_per_s_mqtt``: Mosquitto on loopback started here with a minimal
  config, paho-mqtt QoS 1, one message per reading, publisher -> subscriber
  (the better of paho's default in-flight window and a window of 100);
- ``bytes_per_reading``: content JSON bytes per reading of a regular-interval
  float series (1 Hz, two decimals, a slow wave plus noise), one full event;
  ``bytes_per_reading_e2e`` is what the relaxed run actually sent.

``run(hs, quick=...)`` takes a running DevServer (its rate limits must be the
default ones for ``readings_per_s_default`` to mean anything); ``python
bench/bench_streams.py [--quick]`` starts its own and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from mxsync import Client, OutgoingEvent
from mxsync.dev import Credentials, DevServer
from mxsync.protocol.readings import BatchEncoder
from mxsync.streams import BufferFull

__all__ = ["run"]

MOSQUITTO = "/usr/sbin/mosquitto"
NAIVE = "org.mxsync.bench.naive"


def regular_series(n: int, sensors: int = 10, seed: int = 1) -> Iterator[tuple[str, int, float]]:
    """``sensors`` temperatures at 1 Hz each, two decimals: a slow wave plus noise."""
    rng = random.Random(seed)
    t0 = int(time.time() * 1000) - (n // sensors + 1) * 1000
    names = [f"s{k}" for k in range(sensors)]
    for i in range(n):
        k, step = i % sensors, i // sensors
        v = 21.0 + k + 0.5 * math.sin(2 * math.pi * step / 3600) + rng.gauss(0, 0.02)
        yield names[k], t0 + step * 1000, round(v, 2)


def bytes_per_reading_regular() -> float:
    """Content bytes per reading of one full event of a 1 Hz float series."""
    enc = BatchEncoder(precision=2)
    for sensor, t, v in regular_series(70_000, sensors=1):
        enc.add(sensor, t, v, unit="Cel")
        if enc.would_overflow():
            break
    n = len(enc)
    content = enc.encode("bench", 0, session=1)
    return len(json.dumps(content, separators=(",", ":"))) / n


async def _users(hs: DevServer, *, relaxed: bool) -> tuple[Credentials, Credentials]:
    tag = uuid.uuid4().hex[:8]
    pub = await hs.register(f"benchpub{tag}")
    sub = await hs.register(f"benchsub{tag}")
    await hs.override_ratelimit(sub.user_id)
    if relaxed:
        await hs.override_ratelimit(pub.user_id)
    return pub, sub


async def _room(pc: Client, sc: Client, sub: Credentials, *, encrypted: bool = False) -> str:
    room = await pc.create_room("bench", invite=[sub.user_id], encrypted=encrypted)
    await sc.join(room)
    return room


async def end_to_end(hs: DevServer, tmp: Path, n: int, *, encrypted: bool = False
                     ) -> tuple[float, float]:
    """Relaxed limits: (readings/s publisher -> subscriber, bytes per reading sent)."""
    pub, sub = await _users(hs, relaxed=True)
    async with Client(hs.url, pub.user_id, password=pub.password,
                      store_path=tmp / f"{pub.user_id[1:]}.db") as pc, \
            Client(hs.url, sub.user_id, password=sub.password) as sc:
        room = await _room(pc, sc, sub, encrypted=encrypted)
        async with sc.subscribe(room) as subscriber:
            done = anyio.Event()

            async def consume() -> None:
                got = 0
                async for _ in subscriber:
                    got += 1
                    if got == n:
                        done.set()
                        return

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                # Made before the clock starts, as the MQTT baseline makes its payloads:
                # generating a reading (random.gauss, sin, round) costs about as much
                # as publishing it.
                series = list(regular_series(n))
                async with pc.publisher(room, device="bench", precision=2) as p:
                    p.declare("s0", unit="Cel")
                    start = time.perf_counter()
                    for i, (sensor, t, v) in enumerate(series):
                        try:
                            p.publish(sensor, v, t=t)
                        except BufferFull:
                            await p.publish_wait(sensor, v, t=t)
                        if i % 2000 == 0:
                            await anyio.lowlevel.checkpoint()
                    with anyio.fail_after(600):
                        await done.wait()
                    elapsed = time.perf_counter() - start
                    stats = p.statistics()
    return n / elapsed, stats.bytes_per_reading


async def sustained_default(hs: DevServer, tmp: Path, seconds: float,
                            warmup: float = 12.0) -> float:
    """Default limits: readings/s over the batches that arrive after ``warmup``."""
    pub, sub = await _users(hs, relaxed=False)
    arrivals: list[tuple[float, int]] = []  # (arrival time, readings) per batch
    async with Client(hs.url, sub.user_id, password=sub.password) as sc:
        room = await sc.create_room("bench-default", invite=[pub.user_id])
        async with Client(hs.url, pub.user_id, password=pub.password,
                          store_path=tmp / f"{pub.user_id[1:]}.db") as pc:
            await pc.join(room)
            async with sc.subscribe(room) as subscriber:

                async def consume() -> None:
                    seq = None
                    async for r in subscriber:
                        if r.seq != seq:
                            seq = r.seq
                            arrivals.append((time.perf_counter(), 0))
                        at, k = arrivals[-1]
                        arrivals[-1] = (at, k + 1)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    start = time.perf_counter()
                    async with pc.publisher(room, device="bench", precision=2,
                                            max_buffered=400_000, close_timeout=2) as p:
                        with anyio.move_on_after(seconds):
                            for i, (sensor, t, v) in enumerate(regular_series(10**9)):
                                try:
                                    p.publish(sensor, v, t=t)
                                except BufferFull:
                                    await p.publish_wait(sensor, v, t=t)
                                if i % 2000 == 0:
                                    await anyio.lowlevel.checkpoint()
                    tg.cancel_scope.cancel()
    steady = [(at, k) for at, k in arrivals if at - start >= warmup]
    if len(steady) < 2:
        return 0.0
    readings = sum(k for _, k in steady[1:])
    return readings / (steady[-1][0] - steady[0][0])


async def naive(hs: DevServer, n: int) -> float:
    """One Matrix event per reading: events/s publisher -> subscriber."""
    pub, sub = await _users(hs, relaxed=True)
    async with Client(hs.url, pub.user_id, password=pub.password) as pc, \
            Client(hs.url, sub.user_id, password=sub.password) as sc:
        room = await _room(pc, sc, sub)
        async with sc.room_events(room, [NAIVE]) as recv:
            events = [
                OutgoingEvent(room, NAIVE, {"sensor": s, "t": t, "m": round(v * 100), "p": 2},
                              lane=f"l{i % 8}")
                for i, (s, t, v) in enumerate(regular_series(n))
            ]
            start = time.perf_counter()
            await pc.send_many(events)
            got = 0
            with anyio.fail_after(600):
                async for _ in recv:
                    got += 1
                    if got == n:
                        break
            return n / (time.perf_counter() - start)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_MQTT_OUTSTANDING = 20_000


def _mqtt_once(port: int, n: int, inflight: int) -> float:
    import paho.mqtt.client as mqtt

    done = threading.Event()
    subscribed = threading.Event()
    acked = threading.Condition()
    count = n_acked = 0

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    def on_publish(*args: Any) -> None:
        nonlocal n_acked
        with acked:
            n_acked += 1
            acked.notify()

    tag = uuid.uuid4().hex[:6]
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub{tag}")
    sub.max_inflight_messages_set(inflight)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub{tag}")
    pub.max_inflight_messages_set(inflight)
    pub.max_queued_messages_set(0)
    pub.on_publish = on_publish
    try:
        sub.subscribe(f"bench{tag}/#", qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("mosquitto did not confirm the subscription")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        payloads = [(f"bench{tag}/{s}", f"{t},{v:.2f}") for s, t, v in regular_series(n)]
        start = time.perf_counter()
        for i, (topic, payload) in enumerate(payloads):
            if i - n_acked > _MQTT_OUTSTANDING:
                # paho numbers QoS 1 messages with 16 bits: more than 65,535 queued
                # at once collide and are lost. Bound them, as a real client does.
                with acked:
                    acked.wait_for(lambda i=i: i - n_acked <= _MQTT_OUTSTANDING // 2, 60)
            pub.publish(topic, payload, qos=1)
        if not done.wait(600):
            raise RuntimeError(f"mosquitto delivered {count} of {n} messages in 600 s")
        return n / (time.perf_counter() - start)
    finally:
        pub.loop_stop()
        sub.loop_stop()
        pub.disconnect()
        sub.disconnect()


def mqtt_baseline(n: int, tmp: Path) -> dict[str, float]:
    """Mosquitto + paho QoS 1 on loopback: messages/s for in-flight windows 20 and 100."""
    port = _free_port()
    conf = tmp / "mosquitto.conf"
    # No persistence; an unbounded queue so that a slow subscriber loses nothing.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)
        return {f"inflight_{w}": _mqtt_once(port, n, w) for w in (20, 100)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def run(hs: DevServer, *, quick: bool) -> dict[str, float]:
    """All measurements; ``quick`` shortens each (for CI smoke runs)."""
    n_e2e, n_naive, n_mqtt, seconds = (
        (200_000, 200, 20_000, 25.0) if quick else (1_000_000, 1_000, 100_000, 90.0)
    )
    with tempfile.TemporaryDirectory(prefix="mxsync-bench-") as d:
        tmp = Path(d)
        out: dict[str, float] = {"bytes_per_reading": bytes_per_reading_regular()}
        mq = await anyio.to_thread.run_sync(mqtt_baseline, n_mqtt, tmp)
        out["readings_per_s_mqtt"] = max(mq.values())
        out["readings_per_s_mqtt_paho_default"] = mq["inflight_20"]
        out["readings_per_s_naive"] = await naive(hs, n_naive)
        out["readings_per_s"], out["bytes_per_reading_e2e"] = await end_to_end(hs, tmp, n_e2e)
        out["readings_per_s_default"] = await sustained_default(hs, tmp, seconds)
    # One event per reading under the default limit sustains rc_message: 0.2/s.
    out["readings_per_s_naive_default_ceiling"] = 0.2
    out["x_naive"] = out["readings_per_s"] / out["readings_per_s_naive"]
    out["x_mqtt"] = out["readings_per_s"] / out["readings_per_s_mqtt"]
    return out


async def _main(quick: bool) -> None:
    # Default rate limits: a relaxed server would lift rc_message for every user and
    # make readings_per_s_default meaningless; the relaxed runs lift it per user.
    with tempfile.TemporaryDirectory(prefix="mxsync-bench-hs-") as state:
        async with DevServer(state, rate_limits="default") as hs:
            result = await run(hs, quick=quick)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    anyio.run(_main, args.quick)
