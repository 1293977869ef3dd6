"""``python -m examples.iot_sensor.dashboard``: a live web dashboard of a sensors room.

::

    python -m examples.iot_sensor.dashboard --homeserver http://127.0.0.1:8008 \\
        --user @ops:localhost --password ... --room '!abc:localhost' --port 8083

prints ``dashboard (@ops:localhost)  http://127.0.0.1:8083/``; open that URL.
The dashboard's user only reads the room: it needs no power level.

One :class:`~mxsync.streams.Subscriber` (``client.subscribe``) feeds every page:

- on open, a page gets every known sensor (the room's ``org.mxsync.sensor``
  state and what arrived live) with its last value (``sub.latest``) and the
  last hour in buckets (``sub.window``), and every device's status;
- then, over its WebSocket (``/ws``), live readings (``async for reading in
  sub``) and device changes (``sub.device_changes()``: birth, shutdown, last
  will, missed heartbeats) as they arrive.

The messages are described in ``static/dashboard.js``. ``GET /api/state``
returns what the server knows now (for scripts and tests).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from aiohttp import WSMsgType, web
from anyio.abc import TaskStatus

from mxsync import Client
from mxsync.streams import DeviceStatus, Reading, Subscriber
from mxsync.streams.history import bucket_bounds

from .._web import SOCKETS, Changes, add_app_args, json_dumps, page_app, run_app, serve

__all__ = ["Dashboard", "main", "run_dashboard"]

log = logging.getLogger("examples.dashboard")

STATIC = Path(__file__).with_name("static")
SPAN_MS = 3_600_000
BUCKETS = 240  # 15 s each over the hour
_LOG_SIZE = 20_000  # live messages kept for pages that fall behind
_PARALLEL_WINDOWS = 4


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def device_json(st: DeviceStatus) -> dict[str, Any]:
    # A last will is written when the device arms it, long before it fires: the
    # homeserver's time of the event says when the device went offline.
    since = st.event_ts if st.reason == "last-will" or st.inferred else st.since_ms
    return {
        "id": st.device,
        "online": st.online,
        "since_ms": since,
        "reason": st.reason,
        "inferred": st.inferred,
        "description": st.description,
    }


def share_true(readings: list[Reading], start: int, end: int,
               buckets: int) -> list[dict[str, Any]]:
    """Buckets of a boolean sensor as the chart draws them: the share of true
    readings (0..1) as the mean, 0/1 as the band."""
    edges = bucket_bounds(start, end, buckets)
    n, yes = [0] * buckets, [0] * buckets
    for r in readings:
        if start <= r.t_ms < end and isinstance(r.value, bool):
            i = (r.t_ms - start) * buckets // (end - start)
            n[i] += 1
            yes[i] += r.value
    return [{"t0": edges[i], "t1": edges[i + 1], "n": n[i], "min": int(yes[i] == n[i]),
             "max": int(yes[i] > 0), "mean": yes[i] / n[i]} for i in range(buckets) if n[i]]


def reading_json(r: Reading) -> dict[str, Any]:
    return {"sensor": r.sensor, "device": r.device, "unit": r.unit, "t": r.t_ms, "v": r.value}


class Dashboard:
    """The pages of one dashboard, fed by one :class:`Subscriber`."""

    def __init__(self, sub: Subscriber, room: str, *, room_name: str | None = None,
                 span_ms: int = SPAN_MS, buckets: int = BUCKETS) -> None:
        self.sub = sub
        self.room = room
        self.room_name = room_name
        self.span_ms = span_ms
        self.buckets = buckets
        self.changes = Changes()
        #: Live messages, numbered by ``changes.version`` (the newest has that number).
        self._log: deque[tuple[int, dict[str, Any]]] = deque(maxlen=_LOG_SIZE)
        #: Sensors seen live: id -> (device, unit, last reading).
        self.live: dict[str, Reading] = {}

    def _append(self, msg: dict[str, Any]) -> None:
        self.changes.touch()
        self._log.append((self.changes.version, msg))

    def since(self, version: int) -> list[dict[str, Any]]:
        """Live messages newer than ``version`` (what a page has not seen yet)."""
        return [msg for v, msg in self._log if v > version]

    # -- feeding -------------------------------------------------------------------

    async def follow_readings(self) -> None:
        async for reading in self.sub:
            self.live[reading.sensor] = reading
            self._append({"type": "reading", "reading": reading_json(reading)})

    async def follow_devices(self) -> None:
        async with self.sub.device_changes() as changes:
            async for st in changes:
                self._append({"type": "device", "device": device_json(st)})

    # -- reading ----------------------------------------------------------------------

    def sensor_ids(self) -> list[str]:
        return sorted(set(self.sub.sensors) | set(self.live))

    async def snapshot(self) -> dict[str, Any]:
        """Every sensor with its last value and the last hour, every device."""
        end = _now_ms()
        start = end - self.span_ms
        metas = self.sub.sensors
        sensors: dict[str, dict[str, Any]] = {}
        limiter = anyio.CapacityLimiter(_PARALLEL_WINDOWS)

        async def one(sensor: str) -> None:
            async with limiter:
                meta = metas.get(sensor)
                live = self.live.get(sensor)
                latest = await self.sub.latest(sensor)
                buckets = await self.sub.window(sensor, start, end, self.buckets)
                is_bool = (meta.kind == "bool" if meta else
                           latest is not None and isinstance(latest.value, bool))
                if is_bool:  # window() aggregates numbers only: draw the share of true
                    shares = share_true(await self.sub.history(sensor, start, end),
                                        start, end, self.buckets)
            unit = (meta.unit if meta else None) or (latest.unit if latest else None) or (
                live.unit if live else None)
            device = (meta.device if meta else None) or (latest.device if latest else None) or (
                live.device if live else None) or sensor.partition("/")[0]
            kind = meta.kind if meta else (
                "bool" if latest is not None and isinstance(latest.value, bool) else "float")
            sensors[sensor] = {
                "id": sensor,
                "device": device,
                "unit": unit,
                "kind": kind,
                # What the sensor measures, when its publisher declared it.
                "sensor_kind": meta.sensor_kind if meta else None,
                "name": meta.name if meta else None,
                "last": None if latest is None else {"t": latest.t_ms, "v": latest.value},
                "history": shares if is_bool else [
                    {"t0": b.start_ms, "t1": b.end_ms, "n": b.count,
                     "min": b.min, "max": b.max, "mean": b.mean}
                    for b in buckets if b.count
                ],
            }

        async with anyio.create_task_group() as tg:
            for sensor in self.sensor_ids():
                tg.start_soon(one, sensor)
        return {
            "type": "snapshot",
            "devices": [device_json(st) for st in self.sub.devices.values()],
            "sensors": [sensors[s] for s in sorted(sensors)],
        }

    def state(self) -> dict[str, Any]:
        """What the server knows now, without history (``GET /api/state``)."""
        metas = self.sub.sensors
        sensors: dict[str, Any] = {}
        for sensor in self.sensor_ids():
            live, meta = self.live.get(sensor), metas.get(sensor)
            last: dict[str, Any] | None = None
            if live is not None:
                last = {"t": live.t_ms, "v": live.value}
            elif meta is not None and meta.last_t_ms is not None:
                last = {"t": meta.last_t_ms, "v": meta.last_value()}
            sensors[sensor] = {
                "device": (meta.device if meta else None) or (live.device if live else None),
                "unit": (meta.unit if meta else None) or (live.unit if live else None),
                "last": last,
            }
        return {
            "room": self.room,
            "devices": {d: device_json(st) for d, st in self.sub.devices.items()},
            "sensors": sensors,
        }

    # -- web -------------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = page_app(STATIC)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/api/state", self._api_state)
        return app

    async def _api_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state(), dumps=json_dumps)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        sockets = request.app[SOCKETS]
        sockets.add(ws)
        try:
            await ws.send_str(json_dumps({"type": "hello", "room": self.room,
                                          "room_name": self.room_name,
                                          "span_ms": self.span_ms}))
            seen = self.changes.version  # live messages from here on follow the snapshot
            await ws.send_str(json_dumps(await self.snapshot()))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._push_live, ws, seen)
                async for msg in ws:  # the page sends nothing; this notices it leave
                    if msg.type == WSMsgType.ERROR:
                        break
                tg.cancel_scope.cancel()
        except* ConnectionError:
            pass  # the page went away
        finally:
            sockets.discard(ws)
        return ws

    async def _push_live(self, ws: web.WebSocketResponse, seen: int) -> None:
        while not ws.closed:
            await self.changes.wait_newer(seen)
            pending, seen = self.since(seen), self.changes.version
            readings: list[dict[str, Any]] = []
            for msg in pending:
                if msg["type"] == "reading":
                    readings.append(msg["reading"])
                    continue
                if readings:  # keep the order of readings and device changes
                    await ws.send_str(json_dumps({"type": "readings", "readings": readings}))
                    readings = []
                await ws.send_str(json_dumps(msg))
            if readings:
                await ws.send_str(json_dumps({"type": "readings", "readings": readings}))
            await anyio.sleep(0.1)  # at most ten pushes a second: readings come in batches


async def run_dashboard(
    client: Client,
    room: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
    stop: anyio.Event | None = None,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard of ``room`` until ``stop`` is set (or cancelled)."""
    room_id = await client.join(room)
    name = (await client.get_state(room_id, "m.room.name") or {}).get("name")
    async with client.subscribe(room_id) as sub:
        dash = Dashboard(sub, room_id, room_name=name if isinstance(name, str) else None)
        async with serve(dash.web_app(), host, port) as url, anyio.create_task_group() as tg:
            tg.start_soon(dash.follow_readings)
            tg.start_soon(dash.follow_devices)
            task_status.started(url)
            if on_ready is not None:
                on_ready(url)
            await (stop.wait() if stop is not None else anyio.sleep_forever())
            tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.iot_sensor.dashboard",
        description="A live web dashboard of the sensors publishing into a Matrix room.",
    )
    add_app_args(parser)
    args = parser.parse_args(argv)

    async def run(stop: anyio.Event) -> None:
        from mxsync.cli.common import client_from_args

        async with client_from_args(args) as client:

            def ready(url: str) -> None:
                print(f"dashboard ({client.user_id})  {url}", flush=True)

            await run_dashboard(client, args.room, host=args.host, port=args.port,
                                on_ready=ready, stop=stop)

    return run_app(run, verbose=args.verbose, prog="dashboard")


if __name__ == "__main__":
    sys.exit(main())
