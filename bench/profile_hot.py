"""Profile the two hot paths against a fresh embedded Synapse, and say where the time goes.

    python -m bench.profile_hot docs      [--n 50000]    [--out DIR] [--profiler py-spy]
    python -m bench.profile_hot readings  [--n 1000000]  [--out DIR] [--profiler pyinstrument]

``docs``: one writer types ``n`` single-character edits as fast as it can (a
checkpoint after each, as ``bench_docs`` does) and another client's document
applies them, both relaxed, both in this process. ``readings``: one Publisher
publishes ``n`` readings of 10 sensors (the ``bench_streams`` series) and a
Subscriber in this process iterates them all.

Only the workload is profiled, not the setup. With ``--profiler py-spy`` (the
default) two ``py-spy record`` processes sample this process (every thread: the
event loop and the SQLite worker) and the Synapse process at 250 Hz while the
workload runs, without ``--idle``, so the samples are CPU time; the raw
collapsed stacks land in ``DIR`` (``*.client.txt``, ``*.synapse.txt``) and a
summary is printed: CPU seconds of each process (from /proc), then the frames
that hold the most samples, by self time (the innermost Python frame) and
grouped by package. With ``--profiler pyinstrument`` the event loop's thread of
this process is profiled instead (wall time, idle included) and its text
report is printed and written to ``DIR``.

``python -m bench.profile_hot summarize FILE`` prints the summary of a raw file again.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pycrdt

from mxsync import Client
from mxsync.dev import DevServer

from .bench_streams import regular_series

__all__ = ["main"]

PY_SPY = Path(sys.executable).parent / "py-spy"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def say(msg: str) -> None:
    print(f"[profile] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ summaries


#: A sample whose last frames include one of these is a thread waiting for work
#: (thread-pool queues, the event loop's or the reactor's poll), not doing any.
_WAITING = ("Queue.get (queue.py", "EpollSelector.select (selectors.py",
            "EPollReactor.doPoll (twisted/internet/epollreactor.py")


def _module(file: str) -> str:
    return file.removesuffix(".py")


def summarize(raw: Path, top: int = 15) -> str:
    """Busy samples of a py-spy raw (collapsed) file by self time, module and
    (for mxsync frames) inclusive time, as text."""
    self_time: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        if any(f.startswith(_WAITING) for f in frames[-3:]):
            waiting += count
            continue
        parsed = [(m.group("func"), m.group("file")) if (m := _FRAME.match(f)) else (f, "?")
                  for f in frames]
        func, file = parsed[-1]
        self_time[f"{func} ({_module(file)})"] += count
        modules[_module(file)] += count
        for key in {f"{fn} ({_module(fl)})" for fn, fl in parsed
                    if fl.startswith("mxsync/")}:
            inclusive[key] += count
    busy = total - waiting
    if not busy:
        return f"{raw.name}: no busy samples\n"
    out = [f"{raw.name}: {total} samples, {busy} busy ({100 * waiting / total:.0f}% were "
           "threads waiting in a queue or poll, left out); % of busy samples:"]
    out.append("  self time, by frame:")
    out += [f"    {100 * n / busy:5.1f}%  {k}" for k, n in self_time.most_common(top)]
    out.append("  self time, by module:")
    out += [f"    {100 * n / busy:5.1f}%  {k}" for k, n in modules.most_common(top)]
    if inclusive:
        out.append("  inclusive time, mxsync frames:")
        out += [f"    {100 * n / busy:5.1f}%  {k}" for k, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------- sampling


@asynccontextmanager
async def sampled(hs: DevServer, tag: str, out: Path, profiler: str) -> AsyncIterator[None]:
    """Profile what runs inside the block; print the summary afterwards."""
    pids = {"client": os.getpid(), "synapse": hs.pid}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items() if p}
    started = time.perf_counter()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    pyi: Any = None
    if profiler == "py-spy":
        for k, pid in pids.items():
            procs[k] = subprocess.Popen(
                [str(PY_SPY), "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                 "--output", str(out / f"{tag}.{k}.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await anyio.sleep(1.0)  # py-spy attaches
        started = time.perf_counter()
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items() if p}
    else:
        from pyinstrument import Profiler

        pyi = Profiler(interval=0.001, async_mode="disabled")
        pyi.start()
    try:
        yield
    finally:
        wall = time.perf_counter() - started
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items() if p}
        if pyi is not None:
            pyi.stop()
            text = pyi.output_text(unicode=False, color=False, show_all=False)
            (out / f"{tag}.pyinstrument.txt").write_text(text)
            print(text)
        for proc in procs.values():
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(f"== {tag}: {wall:.2f} s wall; CPU s: "
              + ", ".join(f"{k} {v:.2f} ({100 * v / wall:.0f}% of one core)"
                          for k, v in cpu.items()))
        for k in procs:
            raw = out / f"{tag}.{k}.txt"
            if raw.exists():
                print(summarize(raw))


# ------------------------------------------------------------------ workloads


async def _pair(hs: DevServer) -> tuple[Any, Any]:
    users = []
    for name in ("w", "r"):
        creds = await hs.register(f"prof{name}{int(time.time() * 1000) % 10**8}")
        await hs.override_ratelimit(creds.user_id)
        users.append(creds)
    return users[0], users[1]


async def docs(hs: DevServer, n: int, profile: Callable[[str], Any]) -> None:
    wc, rc = await _pair(hs)
    async with Client(hs.url, wc.user_id, password=wc.password) as w, \
            Client(hs.url, rc.user_id, password=rc.password) as r:
        room = await w.create_room("profile", invite=[r.user_id])
        await r.join(room)
        async with w.open_doc(room, "p") as dw, r.open_doc(room, "p") as dr:
            await dw.wait_synced()
            await dr.wait_synced()
            t = dw.doc.get("t", type=pycrdt.Text)
            rt = dr.doc.get("t", type=pycrdt.Text)
            async with profile("docs"):
                started = time.perf_counter()
                for i in range(n):
                    t += string.ascii_lowercase[i % 26]
                    await anyio.lowlevel.checkpoint()
                typed = time.perf_counter() - started
                while len(rt) < n:  # noqa: ASYNC110 - polls a document
                    await anyio.sleep(0.005)
                elapsed = time.perf_counter() - started
            st = dw.statistics()
    say(f"docs: {n} edits typed in {typed:.2f} s, at the reader after {elapsed:.2f} s "
        f"({n / elapsed:,.0f} edits/s), {st.update_events_sent} events")


async def readings(hs: DevServer, n: int, profile: Callable[[str], Any]) -> None:
    pc, sc = await _pair(hs)
    with tempfile.TemporaryDirectory(prefix="mxsync-profile-") as tmp:
        async with Client(hs.url, pc.user_id, password=pc.password,
                          store_path=Path(tmp) / "pub.db") as p, \
                Client(hs.url, sc.user_id, password=sc.password) as s:
            room = await p.create_room("profile", invite=[s.user_id])
            await s.join(room)
            series = list(regular_series(n))
            async with s.subscribe(room) as sub, \
                    p.publisher(room, device="prof", precision=2) as pub:
                pub.declare("s0", unit="Cel")
                done = anyio.Event()

                async def consume() -> None:
                    got = 0
                    async for _ in sub:
                        got += 1
                        if got == n:
                            done.set()
                            return

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    async with profile("readings"):
                        started = time.perf_counter()
                        for i, (sensor, t, v) in enumerate(series):
                            pub.publish(sensor, v, t=t)
                            if i % 2000 == 0:
                                await anyio.lowlevel.checkpoint()
                        published = time.perf_counter() - started
                        await done.wait()
                        elapsed = time.perf_counter() - started
                st = pub.statistics()
    say(f"readings: {n} published in {published:.2f} s, at the subscriber after "
        f"{elapsed:.2f} s ({n / elapsed:,.0f}/s), {st.batches_sent} batches")


WORKLOADS: dict[str, tuple[Callable[[DevServer, int, Any], Awaitable[None]], int]] = {
    "docs": (docs, 50_000),
    "readings": (readings, 1_000_000),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_hot")
    parser.add_argument("what", choices=[*WORKLOADS, "summarize"])
    parser.add_argument("file", nargs="?", help="summarize: a py-spy raw file")
    parser.add_argument("--n", type=int, help="edits or readings")
    parser.add_argument("--out", default="/tmp/mxsync-profile", help="where profiles go")
    parser.add_argument("--profiler", choices=["py-spy", "pyinstrument"], default="py-spy")
    args = parser.parse_args(argv)
    if args.what == "summarize":
        if not args.file:
            parser.error("summarize needs a file")
        print(summarize(Path(args.file)))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workload, default_n = WORKLOADS[args.what]

    async def go() -> None:
        with tempfile.TemporaryDirectory(prefix="mxsync-profile-hs-") as state:
            async with DevServer(state, rate_limits="default") as hs:
                await workload(hs, args.n or default_n,
                               lambda tag: sampled(hs, tag, out, args.profiler))

    anyio.run(go, backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
