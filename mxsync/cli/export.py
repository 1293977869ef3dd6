"""``mxsync sensor export``: a room's readings to CSV or InfluxDB line protocol, resumable.

::

    mxsync sensor export ROOM --out FILE [--format csv|influx] [--name NAME]
        [--since T] [--until T] [--sensor S ...] [--idle 3] [--follow]

A durable subscriber (``subscribe(room, durable=NAME, start="earliest")``)
reads every batch the room holds from its first event on, then what arrives
live. Readings in ``[--since, --until)`` (by reading time) are appended to
``--out``; after each write the file is flushed and fsynced, and only then is
the position acknowledged. Run it again with the same ``--store`` and
``--name`` and it goes on where it stopped: nothing is skipped, and after a
crash at most the lines written since the last acknowledgement come again
(each line carries the reading's identity, device/session/seq/index, to drop
them by). Without ``--follow`` it stops once no reading came for ``--idle``
seconds.

Values are exact: ints as they are, floats as the shortest decimal that reads
back as the same double, bools as ``true``/``false``; times in nanoseconds
since the epoch (the reading's millisecond times x 10^6).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
from typing import IO, Any

import anyio

from ..errors import ConfigError
from ..protocol.readings import Reading, Value
from .common import add_login_args, client_from_args, parse_time, resolve_room

__all__ = ["add_export_parser", "csv_header", "csv_line", "influx_line"]

_FORMATS = ("csv", "influx")
_MEASUREMENT = "mxsync"


def _kind(v: Value) -> str:
    if isinstance(v, bool):
        return "bool"
    return "int" if isinstance(v, int) else "float" if isinstance(v, float) else "str"


def _exact(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # the shortest round-trip decimal
    return str(v)


def csv_header() -> list[str]:
    return ["t_ns", "sensor", "value", "kind", "unit", "device", "session", "seq", "index"]


def csv_line(r: Reading) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([
        r.t_ms * 1_000_000, r.sensor, _exact(r.value), _kind(r.value), r.unit or "",
        r.device or "", "" if r.session is None else r.session,
        "" if r.seq is None else r.seq, "" if r.index is None else r.index])
    return buf.getvalue()


def _tag(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v}i"
    if isinstance(v, float):
        return repr(v)
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influx_line(r: Reading) -> str:
    """One point: measurement ``mxsync``, tags sensor/device/unit, the value and the
    reading's identity as fields, the time in ns."""
    tags = f"sensor={_tag(r.sensor)}"
    if r.device:
        tags += f",device={_tag(r.device)}"
    if r.unit:
        tags += f",unit={_tag(r.unit)}"
    fields = f"value={_field(r.value)}"
    for name, x in (("session", r.session), ("seq", r.seq), ("index", r.index)):
        if x is not None:
            fields += f",{name}={x}i"
    return f"{_MEASUREMENT},{tags} {fields} {r.t_ms * 1_000_000}\n"


def add_export_parser(actions: Any, run: Any) -> None:
    p = actions.add_parser("export", help="write a room's readings to CSV or InfluxDB line "
                           "protocol, resumable")
    p.add_argument("room", help="room id or alias")
    p.add_argument("--out", required=True, help="file to append to")
    p.add_argument("--format", choices=_FORMATS, default="csv", help="default: %(default)s")
    p.add_argument("--name", default="export", help="durable name of the position "
                   "(default: %(default)s)")
    p.add_argument("--sensor", action="append", dest="sensors", help="only this sensor "
                   "(repeatable)")
    p.add_argument("--since", default=None, help="readings from this time (1h, ISO 8601, ms)")
    p.add_argument("--until", default=None, help="readings before this time")
    p.add_argument("--idle", type=float, default=3.0,
                   help="stop after this many seconds without a reading (default %(default)s)")
    p.add_argument("--follow", action="store_true", help="keep going (never stop when idle)")
    add_login_args(p)
    p.set_defaults(func=lambda args: run(export, args))


async def export(args: argparse.Namespace) -> None:

    if args.idle <= 0:
        raise ConfigError("--idle must be > 0")
    start = None if args.since is None else parse_time(args.since)
    end = None if args.until is None else parse_time(args.until)
    line = csv_line if args.format == "csv" else influx_line
    with open(args.out, "a", encoding="utf-8") as out:  # noqa: ASYNC230 - local file, small writes
        if out.tell() == 0 and args.format == "csv":
            out.write(",".join(csv_header()) + "\n")
        async with client_from_args(args) as client:
            room = await resolve_room(client, args.room)
            async with client.subscribe(room, args.sensors, durable=args.name,
                                        start="earliest") as sub:
                pending = 0
                while True:
                    r: Reading | None = None
                    with anyio.move_on_after(math.inf if args.follow and not pending
                                             else args.idle if not pending else 0.2):
                        r = await sub.__anext__()
                    if r is None:
                        if pending:
                            _sync(out)
                            await sub.ack()
                            pending = 0
                            continue
                        return  # idle: caught up
                    if (start is None or r.t_ms >= start) and (end is None or r.t_ms < end):
                        out.write(line(r))
                    pending += 1
                    if pending >= 1000:
                        _sync(out)
                        await sub.ack()
                        pending = 0


def _sync(out: IO[str]) -> None:
    out.flush()
    os.fsync(out.fileno())
