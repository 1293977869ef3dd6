"""Client memory: the resident set of one client process with 100 documents open and
100 sensors subscribed, next to a bare client's.

The client under test runs in a child process of its own (``python -m
bench.bench_rss --child SPEC``), so the figure is that client's memory alone,
not the harness's (which holds the setup clients) or Synapse's. The parent reads
``VmRSS`` (and ``VmHWM``, the peak) from ``/proc/<pid>/status`` once the child
says it has settled, then tells it to exit.

Setup, by another client of another user (rate limit lifted) before the child
starts:

- 100 documents in 10 rooms (10 per room), each with some content: a text of
  about 2 KB typed in 20 edits (``quick``: 500 bytes in 5) and a map of 20 keys;
- one room with one publisher device and 100 sensors, 100 readings each.

Figures:

- ``client_rss_mb``: the child with a Client (in-memory store), the 100
  documents open and loaded (``wait_synced``; their text checked), and one
  Subscriber on the 100 sensors consuming live readings (the publisher keeps
  publishing one reading per sensor per second while the child runs); read
  after the child settled (``settle`` seconds, then a ``gc.collect()``).
- ``client_rss_mb_bare``: the same child with a logged-in, synced Client and
  nothing opened (the floor: CPython, nio, aiohttp, pycrdt, msgspec, anyio).
- ``client_rss_mb_peak``: ``VmHWM`` of the loaded child (the peak while opening).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pycrdt

from mxsync import Client
from mxsync.dev import DevServer

__all__ = ["run"]

N_DOCS = 100
DOCS_PER_ROOM = 10
N_SENSORS = 100
READINGS_PER_SENSOR = 100
ROOT = Path(__file__).resolve().parent.parent


def say(msg: str) -> None:
    print(f"[rss] {msg}", file=sys.stderr, flush=True)


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MB (MiB), from /proc/<pid>/status."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) / 1024  # kB -> MiB
    return out


def doc_text(i: int, size: int) -> str:
    words = ("sensor", "matrix", "room", "crdt", "edit", "batch", "sync", "event")
    text = " ".join(f"{words[(i + k) % len(words)]}{k}" for k in range(size // 6 + 1))
    return text[:size]


# ---------------------------------------------------------------------- child


async def child(spec: dict[str, Any]) -> None:
    """The client under test: open what ``spec`` names, report ready, wait for stdin."""
    stdin = anyio.wrap_file(sys.stdin)
    info: dict[str, Any] = {"pid": os.getpid()}
    async with Client(spec["url"], spec["user_id"], password=spec["password"]) as client:
        await client.wait_synced()
        async with AsyncExitStack() as stack:
            if spec["mode"] == "loaded":
                started = time.perf_counter()
                docs = []
                for room, name in spec["docs"]:
                    docs.append(await stack.enter_async_context(client.open_doc(room, name)))
                with anyio.fail_after(300):
                    for sdoc in docs:
                        await sdoc.wait_synced()
                for sdoc in docs:
                    text = str(sdoc.doc.get("t", type=pycrdt.Text))
                    assert len(text) == spec["text_size"], (sdoc.name, len(text))
                info["open_s"] = time.perf_counter() - started
                sub = await stack.enter_async_context(
                    client.subscribe(spec["sensor_room"], sensors=spec["sensors"]))
                got = 0

                async def consume() -> None:
                    nonlocal got
                    async for _ in sub:
                        got += 1

                tg = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(tg.cancel_scope.cancel)
                tg.start_soon(consume)
                with anyio.fail_after(60):
                    for s in spec["sensors"][:5]:
                        assert await sub.latest(s) is not None, s
            await anyio.sleep(spec["settle"])
            gc.collect()
            await anyio.sleep(0.5)
            if spec["mode"] == "loaded":
                info["live_readings"] = got
            print("READY " + json.dumps(info), flush=True)
            await stdin.readline()  # the parent has read /proc/<pid>/status


def child_main(spec_json: str) -> int:
    anyio.run(child, json.loads(spec_json), backend="asyncio")
    return 0


# --------------------------------------------------------------------- parent


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Start a child on ``spec``; its /proc status once it is ready, and what it said."""
    cmd = [sys.executable, "-m", "bench.bench_rss", "--child", json.dumps(spec)]
    async with await anyio.open_process(cmd, stderr=None, cwd=ROOT) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        buf = b""
        with anyio.fail_after(600):
            async for chunk in proc.stdout:
                buf += chunk
                if b"\n" in buf:
                    break
        line = buf.decode().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"the rss child said {line!r}")
        info = json.loads(line[6:])
        status = proc_status(proc.pid)
        await proc.stdin.send(b"done\n")
        with anyio.fail_after(60):
            await proc.wait()
    return {**info, **status}


async def setup(hs: DevServer, stack: AsyncExitStack, reader_id: str, quick: bool,
                ) -> tuple[dict[str, Any], Any]:
    """Rooms, documents and a publishing device, written by another user."""
    owner_creds = await hs.register(f"rssowner{uuid.uuid4().hex[:8]}")
    await hs.override_ratelimit(owner_creds.user_id)
    owner = await stack.enter_async_context(
        Client(hs.url, owner_creds.user_id, password=owner_creds.password))
    text_size, edits = (500, 5) if quick else (2000, 20)
    started = time.perf_counter()
    doc_rooms = []
    for r in range(N_DOCS // DOCS_PER_ROOM):
        doc_rooms.append(await owner.create_room(f"rss-docs-{r}", invite=[reader_id]))
    docs = [(doc_rooms[i // DOCS_PER_ROOM], f"doc{i}") for i in range(N_DOCS)]
    async with AsyncExitStack() as docs_stack:
        opened = [await docs_stack.enter_async_context(owner.open_doc(room, name))
                  for room, name in docs]
        for i, sdoc in enumerate(opened):
            await sdoc.wait_synced()
            text = doc_text(i, text_size)
            t = sdoc.doc.get("t", type=pycrdt.Text)
            m = sdoc.doc.get("m", type=pycrdt.Map)
            step = len(text) // edits
            for k in range(edits):
                t += text[k * step:(k + 1) * step if k < edits - 1 else len(text)]
            for k in range(20):
                m[f"key{k}"] = k * i
        with anyio.fail_after(300):
            for sdoc in opened:
                await sdoc.flush()
    say(f"{N_DOCS} documents in {len(doc_rooms)} rooms in {time.perf_counter() - started:.0f} s")
    sensor_room = await owner.create_room("rss-sensors", invite=[reader_id])
    sensors = [f"s{k:03d}" for k in range(N_SENSORS)]
    pub = await stack.enter_async_context(owner.publisher(sensor_room, device="rss",
                                                          precision=2))
    t0 = int(time.time() * 1000) - READINGS_PER_SENSOR * 1000
    for s in sensors:
        pub.declare(s, unit="Cel")
    for step in range(READINGS_PER_SENSOR):
        for k, s in enumerate(sensors):
            pub.publish(s, 20.0 + k / 10 + (step % 7) / 100, t=t0 + step * 1000)
    with anyio.fail_after(120):
        await pub.flush()
    spec = {"docs": docs, "sensor_room": sensor_room, "sensors": sensors,
            "text_size": text_size, "rooms": [*doc_rooms, sensor_room]}
    return spec, pub


async def keep_publishing(pub: Any, sensors: list[str]) -> None:
    """One reading per sensor per second while the child runs."""
    step = 0
    while True:
        for k, s in enumerate(sensors):
            pub.publish(s, 20.0 + k / 10 + (step % 7) / 100)
        step += 1
        await anyio.sleep(1.0)


async def run(hs: DevServer, *, quick: bool) -> dict[str, float]:
    settle = 2.0 if quick else 10.0
    reader = await hs.register(f"rssreader{uuid.uuid4().hex[:8]}")
    await hs.override_ratelimit(reader.user_id)
    base = {"url": hs.url, "user_id": reader.user_id, "password": reader.password,
            "settle": settle}
    results: dict[str, float] = {}
    async with AsyncExitStack() as stack:
        spec, pub = await setup(hs, stack, reader.user_id, quick)
        async with Client(hs.url, reader.user_id, access_token=reader.access_token) as rc:
            for room in spec["rooms"]:
                await rc.join(room)
        bare = await measure({**base, "mode": "bare"})
        say(f"bare client: {bare['VmRSS']:.1f} MB")
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_publishing, pub, spec["sensors"])
            loaded = await measure({**base, **spec, "mode": "loaded"})
            tg.cancel_scope.cancel()
        say(f"{N_DOCS} documents + {N_SENSORS} sensors: {loaded['VmRSS']:.1f} MB "
            f"(peak {loaded['VmHWM']:.1f} MB), documents opened in {loaded['open_s']:.1f} s, "
            f"{loaded['live_readings']} live readings")
    results["client_rss_mb"] = loaded["VmRSS"]
    results["client_rss_mb_peak"] = loaded["VmHWM"]
    results["client_rss_mb_bare"] = bare["VmRSS"]
    results["client_open_100_docs_s"] = loaded["open_s"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_rss")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)

    async def go() -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="mxsync-bench-rss-") as state:
            async with DevServer(state, rate_limits="default") as hs:
                return await run(hs, quick=args.quick)

    print(json.dumps(anyio.run(go, backend="asyncio"), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
