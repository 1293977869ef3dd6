"""``python -m examples.iot_sensor.sensor``: simulated devices publishing into a room.

::

    python -m examples.iot_sensor.sensor --homeserver http://127.0.0.1:8008 \\
        --user @plant:localhost --password ... --room '!abc:localhost' \\
        [--devices office:climate,greenhouse:climate,front-door:door] [--interval 1]

Each device is one :class:`~mxsync.streams.Publisher` (``client.publisher``):
it announces itself online, publishes a reading per sensor every ``--interval``
seconds (see :mod:`examples.iot_sensor.simulate` for what they measure), and
marks itself offline when the process stops with Ctrl-C or SIGTERM. If the
process is killed outright, the homeserver's last will marks it offline a
little later (the publisher's ``offline_after``).

``--backfill MINUTES`` first publishes that much simulated history, with past
timestamps, as a device that buffered readings while offline would; the demo
uses it so that the dashboard has an hour to show at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio

from mxsync import Client
from mxsync.protocol.types import DEVICE
from mxsync.streams import Publisher

from .._web import run_app
from .simulate import DEFAULT_DEVICES, Climate, Device, parse_devices, timeline

__all__ = ["main", "run_sensors"]

log = logging.getLogger("examples.iot_sensor")

_PRECISION = {"Cel": 2, "%RH": 1}
_NAMES = {"temperature": "Temperature", "humidity": "Relative humidity", "door": "Door contact"}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _declare(pub: Publisher, device: Device) -> None:
    """Name each sensor, and round floats to what the sensor resolves."""
    for sensor, _value, unit in device.sample(_now_ms()):
        quantity = sensor.rpartition("/")[2]
        pub.declare(sensor, precision=_PRECISION.get(unit or ""), unit=unit,
                    name=f"{device.name} {_NAMES.get(quantity, quantity)}")


async def run_sensors(
    client: Client,
    room: str,
    devices: list[Device],
    *,
    interval: float = 1.0,
    backfill_minutes: float = 0.0,
    stop: anyio.Event | None = None,
    offline_after: float = 30.0,
    on_ready: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Publish the devices' readings into ``room`` until ``stop`` is set (or cancelled).

    Leaving normally (``stop``) flushes what is buffered and marks every device
    offline ("shutdown"), and returns each device's state as the room has it
    then; cancellation leaves the offline mark to the last will.
    """
    room_id = await client.join(room)
    step_ms = max(1, int(interval * 1000))
    async with AsyncExitStack() as stack:
        pubs = []
        for device in devices:
            kind = "climate sensor" if isinstance(device, Climate) else "door contact"
            pub = await stack.enter_async_context(client.publisher(
                room_id, device=device.name, description=f"simulated {kind}",
                offline_after=offline_after, close_timeout=15.0,
            ))
            _declare(pub, device)
            pubs.append((pub, device))
        if backfill_minutes > 0:
            end = _now_ms()
            for t in timeline(end - int(backfill_minutes * 60_000), end, step_ms):
                for pub, device in pubs:
                    for sensor, value, unit in device.sample(t):
                        pub.publish(sensor, value, t=t, unit=unit)
            log.info("backfilled %.0f min of readings", backfill_minutes)
        if on_ready is not None:
            on_ready()
        next_t = time.monotonic()
        while stop is None or not stop.is_set():
            t = _now_ms()
            for pub, device in pubs:
                for sensor, value, unit in device.sample(t):
                    pub.publish(sensor, value, t=t, unit=unit)
            next_t += interval
            with anyio.move_on_after(max(0.0, next_t - time.monotonic())):
                await (stop.wait() if stop is not None else anyio.sleep_forever())
        log.info("stopping: flushing and marking %d device(s) offline", len(pubs))
    # The publishers are closed: read back what the room now says of each device.
    states = {ev.state_key: ev.content for ev in await client.room_state(room_id)
              if ev.type == DEVICE and ev.state_key is not None}
    return {d.name: states.get(d.name, {}) for d in devices}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.iot_sensor.sensor",
        description="Simulated devices publishing sensor readings into a Matrix room.",
    )
    from mxsync.cli.common import add_login_args

    add_login_args(parser)
    parser.add_argument("--room", required=True, help="room id (or alias) to publish into")
    parser.add_argument("--devices", default=DEFAULT_DEVICES,
                        help="NAME:KIND,... with KIND climate or door (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between readings (default: %(default)s)")
    parser.add_argument("--backfill", type=float, default=0.0, metavar="MINUTES",
                        help="first publish this many minutes of past readings")
    parser.add_argument("--seed", type=int, default=None, help="repeatable simulation")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    args = parser.parse_args(argv)
    try:
        devices = parse_devices(args.devices, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0.05 <= args.interval <= 3600:
        parser.error("--interval must be within 0.05..3600 seconds")

    async def run(stop: anyio.Event) -> None:
        from mxsync.cli.common import client_from_args

        async with client_from_args(args) as client:

            def ready() -> None:
                names = ", ".join(d.name for d in devices)
                print(f"sensors ({client.user_id})  publishing {names} every "
                      f"{args.interval:g} s; Ctrl-C marks them offline", flush=True)

            states = await run_sensors(client, args.room, devices, interval=args.interval,
                                       backfill_minutes=args.backfill, stop=stop,
                                       on_ready=ready)
            for name, st in states.items():
                status = "online" if st.get("online") else "offline"
                print(f"sensors: {name} is {status} ({st.get('reason', 'no state')})",
                      flush=True)

    return run_app(run, verbose=args.verbose, prog="sensor")


if __name__ == "__main__":
    sys.exit(main())
