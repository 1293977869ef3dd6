"""``mxsync demo``: the embedded homeserver with clients syncing through it.

Starts the devserver (state in ``.mxsync/demo``), registers demo users,
creates a room, and shows two clients keeping data current through it. Ctrl-C
stops everything, the homeserver included.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import time
from pathlib import Path

import anyio

from . import Client, OutgoingEvent
from .devserver import DevServer

__all__ = ["add_demo_parser", "cmd_demo", "run_demo"]

_T = "org.mxsync.demo"


async def run_demo(state_dir: Path, seconds: float | None) -> None:
    async with DevServer(state_dir / "devserver", rate_limits="default") as hs:
        print(f"homeserver  {hs.url}  (Synapse, default rate limits)", flush=True)
        alice_c = await hs.register("alice")
        bob_c = await hs.register("bob")
        async with (
            Client(hs.url, alice_c.user_id, password=alice_c.password,
                   store_path=state_dir / "alice.db") as alice,
            Client(hs.url, bob_c.user_id, password=bob_c.password,
                   store_path=state_dir / "bob.db") as bob,
        ):
            room = await alice.create_room("mxsync demo", invite=[bob.user_id])
            await bob.join(room)
            print(f"room        {room}", flush=True)
            with anyio.move_on_after(seconds if seconds is not None else float("inf")):
                async with bob.room_events(room, [_T]) as recv, anyio.create_task_group() as tg:

                    async def publish() -> None:
                        n = 0
                        while True:
                            await alice.send_many([OutgoingEvent(room, _T, {
                                "n": n, "sent_ms": int(time.time() * 1000)})])
                            n += 1
                            await anyio.sleep(5.0)  # under the default 0.2 events/s

                    tg.start_soon(publish)
                    async for ev in recv:
                        lag = int(time.time() * 1000) - int(ev.content.get("sent_ms", 0))
                        print(f"bob got n={ev.content.get('n')} from {ev.sender} "
                              f"({lag} ms after alice sent it)", flush=True)


def add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the demo on the embedded homeserver")
    p.add_argument("--state-dir", default=".mxsync/demo", type=Path)
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    async def main() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        print("stopping ...", flush=True)
                        tg.cancel_scope.cancel()
                        return

                tg.start_soon(stop_on_signal)
                await run_demo(args.state_dir, args.seconds)
                tg.cancel_scope.cancel()

    try:
        anyio.run(functools.partial(main), backend="asyncio")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cmd_demo(argparse.Namespace(state_dir=Path(".mxsync/demo"), seconds=None)))
