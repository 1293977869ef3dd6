"""``mxsync sensor``: publish a reading, tail a room, print a sensor's history.

::

    mxsync sensor publish ROOM SENSOR VALUE [--unit U] [--precision P] [--type T]
    mxsync sensor tail ROOM [--sensor S ...]
    mxsync sensor history ROOM SENSOR --since 1h [--until T] [--csv]
    mxsync sensor export ROOM --out FILE [--format csv|influx] [--name N] (resumable,
        see :mod:`mxsync.cli.export`)

ROOM is a room id (``!abc:server``) or an alias (``#name:server``, joined
first). Login options come from ``mxsync.cli.common`` (flags or MXSYNC_*
environment variables).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import anyio

from ..errors import ConfigError, MxsyncError
from ..protocol.readings import Reading, Value
from ..streams import DeviceStatus
from .common import (
    add_login_args,
    client_from_args,
    client_store,
    parse_time,
    resolve_room,
    run_command,
)
from .export import add_export_parser

__all__ = ["add_parser", "parse_value", "parse_time", "format_time"]

#: How long ``publish`` waits for its last events under the homeserver's rate limit.
_SEND_TIMEOUT = 120.0


def parse_value(text: str, kind: str = "auto") -> Value:
    """A reading's value from the command line: ``auto`` reads true/false as a
    bool, an integer literal as an int, a decimal as a float, anything else as str."""
    if kind == "str":
        return text
    if kind in ("auto", "bool") and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind == "bool":
        raise ConfigError(f"not a bool: {text!r} (true or false)")
    if kind in ("auto", "int"):
        try:
            return int(text)
        except ValueError:
            if kind == "int":
                raise ConfigError(f"not an int: {text!r}") from None
    try:
        return float(text)
    except ValueError:
        if kind == "float":
            raise ConfigError(f"not a float: {text!r}") from None
    return text


def format_time(t_ms: int) -> str:
    dt = datetime.fromtimestamp(t_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t_ms % 1000:03d}Z"


def _fmt_value(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("sensor", help="publish and watch sensor readings",
                            description="Publish and watch sensor readings in a room.")
    actions = parser.add_subparsers(dest="sensor_command", metavar="ACTION", required=True)

    p = actions.add_parser("publish", help="publish one reading")
    p.add_argument("room", help="room id or alias")
    p.add_argument("sensor", help="sensor id, e.g. room1/temp")
    p.add_argument("value", help="the value (true/false, an int, a decimal, or text)")
    p.add_argument("--type", dest="kind", default="auto",
                   choices=["auto", "int", "float", "bool", "str"], help="value type")
    p.add_argument("--unit", help="unit, e.g. Cel")
    p.add_argument("--precision", type=int, help="decimals a float is rounded to")
    p.add_argument("--time", dest="at", help="time of the reading (default now)")
    p.add_argument("--device", default="cli", help="device id (default: cli)")
    p.add_argument("--presence", action="store_true",
                   help="announce the device (birth, then shutdown) around the reading")
    add_login_args(p)
    p.set_defaults(func=cmd_publish)

    p = actions.add_parser("tail", help="print the last values, then readings and device "
                           "changes as they arrive")
    p.add_argument("room", help="room id or alias")
    p.add_argument("--sensor", action="append", dest="sensors", help="only this sensor "
                   "(repeatable)")
    p.add_argument("--csv", action="store_true", help="CSV output")
    add_login_args(p)
    p.set_defaults(func=cmd_tail)

    p = actions.add_parser("history", help="print the readings of one sensor over a time range")
    p.add_argument("room", help="room id or alias")
    p.add_argument("sensor", help="sensor id")
    p.add_argument("--since", default="1h", help="start: 1h, 30m, ISO 8601 or ms (default 1h)")
    p.add_argument("--until", default="now", help="end, excluded (default now)")
    p.add_argument("--lag", type=float, default=None,
                   help="seconds a reading may have reached the server after its time "
                   "(only for ranges older than the batch index's retention)")
    p.add_argument("--csv", action="store_true", help="CSV output")
    add_login_args(p)
    p.set_defaults(func=cmd_history)

    add_export_parser(actions, _run)


def _run(main: Any, args: argparse.Namespace) -> int:
    return run_command(f"mxsync sensor {args.sensor_command}", lambda: main(args))


def cmd_publish(args: argparse.Namespace) -> int:
    return _run(_publish, args)


async def _publish(args: argparse.Namespace) -> None:
    value = parse_value(args.value, args.kind)
    t = None if args.at is None else parse_time(args.at)
    async with client_from_args(args) as client:
        room = await resolve_room(client, args.room)
        async with client.publisher(room, device=args.device, presence=args.presence,
                                    max_age=0.0) as pub:
            pub.declare(args.sensor, precision=args.precision, unit=args.unit)
            pub.publish(args.sensor, value, t=t)
            await pub.flush()
        # The publisher's last events (its shutdown state, its sensor's state)
        # may still be in the outbox: a success means they are on the homeserver.
        with anyio.move_on_after(_SEND_TIMEOUT):
            await client.outbox.flush()
        if client.outbox.pending:
            raise MxsyncError(f"{client.outbox.pending} event(s) not sent within "
                              f"{_SEND_TIMEOUT:g} s; they stay in the store "
                              f"({client_store(args)}) for the next run")


def cmd_tail(args: argparse.Namespace) -> int:
    return _run(_tail, args)


def _row(r: Reading) -> list[str]:
    return [str(r.t_ms), format_time(r.t_ms), r.sensor, _fmt_value(r.value), r.unit or "",
            r.device or ""]


async def _tail(args: argparse.Namespace, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    writer = csv.writer(out) if args.csv else None
    if writer is not None:
        writer.writerow(["t_ms", "time", "sensor", "value", "unit", "device"])
    async with client_from_args(args) as client:
        room = await resolve_room(client, args.room)
        async with client.subscribe(room, args.sensors) as sub:

            async def devices() -> None:
                async with sub.device_changes() as changes:
                    async for st in changes:
                        _print_device(st, out)

            def show(r: Reading, note: str = "") -> None:
                if writer is not None:
                    writer.writerow(_row(r))
                else:
                    print(f"{format_time(r.t_ms)} {r.sensor} {_fmt_value(r.value)}"
                          f"{' ' + r.unit if r.unit else ''} [{r.device}]{note}", file=out)
                out.flush()

            # Like an MQTT retained message: the last known values first.
            shown: dict[str, int] = {}
            for sensor in sorted(sub.sensors):
                if args.sensors and sensor not in args.sensors:
                    continue
                last = await sub.latest(sensor)
                if last is not None:
                    show(last, " (last)")
                    shown[sensor] = last.t_ms
            async with anyio.create_task_group() as tg:
                tg.start_soon(devices)
                async for r in sub:
                    # A batch that arrives live may hold the reading shown as last.
                    if r.t_ms > shown.get(r.sensor, -1):
                        show(r)


def _print_device(st: DeviceStatus, out: TextIO) -> None:
    state = "online" if st.online else "offline"
    why = f" ({st.reason})" if st.reason else ""
    print(f"{format_time(st.event_ts)} device {st.device} {state}{why}", file=out, flush=True)


def cmd_history(args: argparse.Namespace) -> int:
    return _run(_history, args)


async def _history(args: argparse.Namespace, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    now = int(time.time() * 1000)
    start, end = parse_time(args.since, now), parse_time(args.until, now)
    if end <= start:
        raise ConfigError("--until must be after --since")
    async with client_from_args(args) as client:
        room = await resolve_room(client, args.room)
        async with client.subscribe(room, live=False) as sub:
            readings = await sub.history(args.sensor, start, end, lag=args.lag)
    if args.csv:
        writer = csv.writer(out)
        writer.writerow(["t_ms", "time", "sensor", "value", "unit", "device"])
        writer.writerows(_row(r) for r in readings)
    else:
        for r in readings:
            print(f"{format_time(r.t_ms)}\t{_fmt_value(r.value)}\t{r.unit or ''}", file=out)
