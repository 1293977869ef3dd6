"""``python -m examples.iot_sensor.ingest``: a room's readings into SQLite, each exactly once.

::

    python -m examples.iot_sensor.ingest --homeserver http://127.0.0.1:8008 \\
        --user @ingest:localhost --password ... --room '!abc:localhost' \\
        --db readings.db [--name ingest] [--ack-every 10]

An ingestion sink: a durable subscriber (``client.subscribe(room,
durable=NAME)``) whose position lives in the client's store (``--store``).
Each reading is written with ``INSERT OR IGNORE`` under its identity
``(device, session, seq, idx)``, the sink's transaction is committed, and only
then is the subscriber told (``await sub.ack()``). Killed at any moment (even
``kill -9``), the sink started again with the same store and name gets every
reading it had not acknowledged, and the primary key drops the few it had
written but not yet acknowledged: the table holds each reading exactly once.

``--trace FILE`` appends ``got ID`` and ``ack ID`` lines, for tests that check
what was handed out and acknowledged.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import anyio

from mxsync import Client, Reading

__all__ = ["Sink", "ingest", "main"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    device TEXT NOT NULL, session INTEGER, seq INTEGER NOT NULL, idx INTEGER NOT NULL,
    sensor TEXT NOT NULL, t_ms INTEGER NOT NULL, value TEXT NOT NULL, unit TEXT,
    PRIMARY KEY (device, session, seq, idx)
)
"""


def identity_text(r: Reading) -> str:
    return "/".join(str(x) for x in r.identity)


class Sink:
    """An idempotent SQLite table of readings, keyed by identity."""

    def __init__(self, path: str | Path) -> None:
        self.conn = sqlite3.connect(path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(SCHEMA)
        self.conn.commit()

    def write(self, readings: list[Reading]) -> None:
        """Insert ``readings`` (those already there are ignored) and commit."""
        # The value is kept as JSON: exact for ints, floats (repr), bools and text.
        self.conn.executemany(
            "INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.device, r.session, r.seq, r.index, r.sensor, r.t_ms, json.dumps(r.value),
              r.unit) for r in readings])
        self.conn.commit()

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM readings").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


async def ingest(client: Client, room: str, sink: Sink, *, name: str = "ingest",
                 ack_every: int = 10, idle: float = 0.5,
                 trace: IO[str] | None = None) -> None:
    """Write the room's readings into ``sink`` until cancelled: commit, then ack,
    every ``ack_every`` readings or after ``idle`` seconds without one."""
    room_id = await client.join(room)
    pending: list[Reading] = []
    async with client.subscribe(room_id, durable=name) as sub:
        if trace is not None:
            trace.write("ready\n")
            trace.flush()

        async def commit() -> None:
            sink.write(pending)
            await sub.ack()
            if trace is not None:
                trace.writelines(f"ack {identity_text(p)}\n" for p in pending)
                trace.flush()
            pending.clear()

        while True:
            r: Reading | None = None
            # A quiet stream commits what it holds after a short wait.
            with anyio.move_on_after(idle if pending else math.inf):
                try:
                    r = await sub.__anext__()
                except StopAsyncIteration:
                    break
            if r is None:
                await commit()
                continue
            pending.append(r)
            if trace is not None:
                trace.write(f"got {identity_text(r)}\n")
                trace.flush()
            if len(pending) >= ack_every:
                await commit()


def main(argv: Sequence[str] | None = None) -> int:
    from mxsync.cli.common import add_login_args, client_from_args

    parser = argparse.ArgumentParser(prog="python -m examples.iot_sensor.ingest",
                                     description="A room's sensor readings into SQLite.")
    add_login_args(parser)
    parser.add_argument("--room", required=True, help="room id (or alias)")
    parser.add_argument("--db", required=True, help="SQLite file of the readings")
    parser.add_argument("--name", default="ingest", help="durable name (default %(default)s)")
    parser.add_argument("--ack-every", type=int, default=10,
                        help="readings per commit and ack (default %(default)s)")
    parser.add_argument("--idle", type=float, default=0.5,
                        help="seconds without a reading before committing (default %(default)s)")
    parser.add_argument("--trace", default=None, help="append got/ack lines to this file")
    args = parser.parse_args(argv)
    if args.ack_every < 1:
        parser.error("--ack-every must be >= 1")

    async def run() -> None:
        sink = Sink(args.db)
        trace = open(args.trace, "a") if args.trace else None  # noqa: SIM115, ASYNC230
        try:
            async with client_from_args(args) as client:
                print(f"ingest ({client.user_id}) writing {args.room} into {args.db}",
                      flush=True)
                await ingest(client, args.room, sink, name=args.name,
                             ack_every=args.ack_every, idle=args.idle, trace=trace)
        finally:
            sink.close()
            if trace is not None:
                trace.close()

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
