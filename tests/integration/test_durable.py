"""At-least-once consumption with a durable name, exactly-once with a key (real Synapse).

The example sink (examples/iot_sensor/ingest.py: a durable subscriber writing
into SQLite by identity, committing before it acknowledges) runs as a child
process. It is killed with SIGKILL mid-stream, readings go on arriving while it
is dead, and it is started again with the same store and durable name: it is
handed every reading it had not acknowledged, none it had, and its table ends
up with every published reading exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from mxsync import ConfigError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000


def trace_lines(path: Path) -> tuple[list[str], list[str], bool]:
    """The ``got`` and ``ack`` identities of a trace file, and whether it said ready
    (a line cut by the kill is ignored)."""
    got: list[str] = []
    ack: list[str] = []
    ready = False
    if not path.exists():
        return got, ack, ready
    for line in path.read_text().split("\n")[:-1]:
        if line == "ready":
            ready = True
        elif line.startswith("got "):
            got.append(line[4:])
        elif line.startswith("ack "):
            ack.append(line[4:])
    return got, ack, ready


def sink_rows(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT t_ms, value FROM readings ORDER BY t_ms").fetchall()
    except sqlite3.OperationalError:
        return []  # not created yet
    finally:
        conn.close()


async def poll(cond, *, deadline: float = 60.0) -> None:
    with anyio.fail_after(deadline):
        while not cond():  # noqa: ASYNC110 - a file or a table, polled
            await anyio.sleep(0.05)


async def test_a_sink_killed_mid_stream_gets_what_it_had_not_acknowledged(
    hs, make_user, make_client, tmp_path
):
    dev_c = await make_user("meter", relaxed=True)
    sink_c = await make_user("sink", relaxed=True)
    dev = await make_client(dev_c)
    room = await dev.create_room("ingest", invite=[sink_c.user_id])
    store, db = tmp_path / "sink-store.db", tmp_path / "sink.db"
    traces = [tmp_path / "trace1.txt", tmp_path / "trace2.txt"]

    def start(trace: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "examples.iot_sensor.ingest", "--homeserver", hs.url,
             "--user", sink_c.user_id, "--password", sink_c.password, "--store", str(store),
             "--room", room, "--db", str(db), "--name", "warehouse", "--ack-every", "7",
             "--idle", "1.5", "--trace", str(trace)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    published: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with dev.publisher(room, device="meter", presence=False, max_age=0.05) as pub:

            async def publish(n: int, pause: float) -> None:
                for _ in range(n):
                    i = len(published)
                    pub.publish("w", i * 10, t=T0 + i)
                    published.append(i * 10)
                    if i % 5 == 4:
                        await pub.flush()
                        await anyio.sleep(pause)
                await pub.flush()

            procs.append(start(traces[0]))
            await poll(lambda: trace_lines(traces[0])[2], deadline=90)
            # Mid-stream: it has acknowledged some and holds more not acknowledged.
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish, 40, 0.3)

                def mid_stream() -> bool:
                    got, ack, _ = trace_lines(traces[0])
                    return len(ack) >= 14 and len(got) > len(ack)

                await poll(mid_stream, deadline=60)
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(timeout=10)
            got1, acked1, _ = trace_lines(traces[0])
            await publish(20, 0.0)  # while it is dead

            procs.append(start(traces[1]))
            total = len(published)
            started = time.monotonic()
            await poll(lambda: len(sink_rows(db)) >= total, deadline=90)
            restart_s = time.monotonic() - started
            await anyio.sleep(2.0)  # nothing more arrives
            got2, _, _ = trace_lines(traces[1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)

    unacked = set(got1) - set(acked1)
    assert unacked, "the kill was not mid-stream"
    # Every reading not acknowledged came again; none acknowledged did.
    assert unacked <= set(got2)
    assert not set(acked1) & set(got2)
    # Between the two runs, each reading was acknowledged or handed out again: all of them.
    assert len(set(acked1) | set(got2)) == total == 60
    assert len(got2) == len(set(got2))  # once each in the second run
    # The sink holds each exactly once, with its exact value.
    rows = sink_rows(db)
    assert [json.loads(v) for _, v in rows] == published
    assert [t for t, _ in rows] == [T0 + i for i in range(total)]
    assert restart_s < 60


async def test_durable_names_are_checked(hs, make_user, make_client):
    c = await make_client(await make_user("dn"))
    room = await c.create_room("dn")
    for bad in ("", "has space", "x" * 200, 7):
        with pytest.raises(ConfigError, match="durable"):
            c.subscribe(room, durable=bad)
    with pytest.raises(ConfigError, match="durable"):
        c.subscribe(room, durable="ok", live=False)
    async with c.subscribe(room) as sub:
        with pytest.raises(RuntimeError, match="durable"):
            await sub.ack()


async def test_sensor_export_resumes_where_it_stopped(hs, make_user, make_client, tmp_path):
    """Two runs of ``mxsync sensor export`` with the same store and name: the file
    holds every reading of the room once, exact values and ns times, in both formats."""
    dev_c = await make_user("exp", relaxed=True)
    dev = await make_client(dev_c)
    room = await dev.create_room("export")
    store = tmp_path / "export-store.db"
    outs = {"csv": tmp_path / "out.csv", "influx": tmp_path / "out.lp"}
    values: list[int | float | bool | str] = [21.375, -3, True, "on", 0.1, 2**53 - 1, 1e-7]

    def run(fmt: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "mxsync", "sensor", "export", room, "--out",
             str(outs[fmt]), "--format", fmt, "--name", f"x-{fmt}", "--idle", "2",
             "--homeserver", hs.url, "--user", dev_c.user_id, "--password", dev_c.password,
             "--store", str(store)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
            text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    async def publish(offset: int) -> None:
        async with dev.publisher(room, device="d-1", presence=False) as pub:
            for i, v in enumerate(values):
                pub.publish(f"s{type(v).__name__}", v, t=T0 + offset + i)
            await pub.flush()

    with anyio.fail_after(200):
        await publish(0)
        for fmt in outs:
            await anyio.to_thread.run_sync(run, fmt)
        await publish(1000)
        for fmt in outs:
            await anyio.to_thread.run_sync(run, fmt)

    want = [(1_000_000 * (T0 + off + i), v) for off in (0, 1000) for i, v in enumerate(values)]
    lines = outs["csv"].read_text().splitlines()
    assert lines[0] == "t_ns,sensor,value,kind,unit,device,session,seq,index"
    parsed = []
    for row in lines[1:]:
        t_ns, _sensor, value, kind, _unit, device, _session, _seq, _index = row.split(",")
        assert device == "d-1"
        conv = {"int": int, "float": float, "bool": lambda s: s == "true", "str": str}[kind]
        parsed.append((int(t_ns), conv(value)))
    assert sorted(parsed, key=lambda p: p[0]) == want
    assert len(parsed) == len(set(parsed)) == len(want)
    points = outs["influx"].read_text().splitlines()
    assert len(points) == len(want)
    first = sorted(points, key=lambda p: int(p.rsplit(" ", 1)[1]))[0]
    assert first.startswith("mxsync,sensor=sfloat,device=d-1 value=21.375,session=")
    assert first.endswith(f" {1_000_000 * T0}")
    assert any(" value=9007199254740991i," in p for p in points)
    assert any(' value="on",' in p for p in points)
    assert any(" value=1e-07," in p for p in points)
