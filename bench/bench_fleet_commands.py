"""Commands to a device behind the appservice gateway (pushed transactions) next
to the same command to a device on an ordinary client (/sync), same run, same Synapse.

- ``fleet_cmd_rtt_p50_ms`` / ``_p99_ms``: a dashboard's ``sub.command`` to a device
  of the FleetGateway until its result is back: the command reaches the
  gateway in a transaction Synapse pushes to its endpoint (fleet/transactions.py),
  the answer leaves as the device user.
- ``fleet_cmd_rtt_sync_p50_ms`` / ``_p99_ms``: the baseline, the same command
  to a device whose Publisher runs on its own logged-in Client (its /sync loop).
- ``x_fleet_cmd_rtt_p50``: baseline p50 / gateway p50 (above 1: the push is faster).

Commands are sequential (one in flight), ``N`` of each, interleaved so that load
drifts hit both alike. The users are relaxed (no rate limit on the dashboard).
Its own Synapse with the registration installed (the url is a loopback port).

Run alone: ``python -m bench.bench_fleet_commands [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mxsync import Client
from mxsync.dev import DevServer
from mxsync.dev.process import free_port
from mxsync.fleet.appservice import FleetGateway, Registration
from mxsync.protocol import api


async def _serve(pub: Any) -> None:
    async for cmd in pub.commands():
        await cmd.ok({"n": cmd.args.get("n")})


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def rtts(n: int, tmp: Path) -> dict[str, float]:
    reg = Registration.generate("localhost", url=f"http://127.0.0.1:{free_port()}")
    reg_file = reg.write(tmp / "fleet.yaml")
    async with DevServer(tmp / "synapse", rate_limits="default",
                         app_services=[reg_file]) as hs:
        dash_c, dev_c = await hs.register("cdash"), await hs.register("cdev")
        for c in (dash_c, dev_c):
            await hs.override_ratelimit(c.user_id)
        async with Client(hs.url, dash_c.user_id, password=dash_c.password,
                          store_path=tmp / "dash.db", encryption=False) as dash, \
                Client(hs.url, dev_c.user_id, password=dev_c.password,
                       store_path=tmp / "dev.db", encryption=False) as dev, \
                Client(hs.url, reg.sender, access_token=reg.as_token,
                       store_path=tmp / "gw.db", encryption=False, sync=False) as bot:
            room = await dash.create_room("cmd bench", invite=[reg.sender, dev_c.user_id])
            await dash.set_power_level(room, reg.sender, 100)
            await dev.join(room)
            await bot.request(api.join(room))
            async with FleetGateway(bot, reg, room) as gw:
                await gw.add_devices(["gwdev"])
                async with gw.publisher("gwdev", max_age=0.2) as gpub, \
                        dev.publisher(room, device="syncdev", max_age=0.2) as spub, \
                        dash.subscribe(room, live=False) as sub, \
                        anyio.create_task_group() as tg:
                    tg.start_soon(_serve, gpub)
                    tg.start_soon(_serve, spub)
                    got: dict[str, list[float]] = {"gwdev": [], "syncdev": []}
                    with anyio.fail_after(60 + n * 4):
                        for device in ("gwdev", "syncdev"):  # warm-up, not counted
                            await sub.command(device, "ping", {"n": -1}, timeout=30)
                        for i in range(n):
                            for device in ("gwdev", "syncdev"):
                                t = time.perf_counter()
                                assert await sub.command(device, "ping", {"n": i},
                                                         timeout=30) == {"n": i}
                                got[device].append((time.perf_counter() - t) * 1000)
                    tg.cancel_scope.cancel()
    g, s = got["gwdev"], got["syncdev"]
    return {"fleet_cmd_rtt_p50_ms": statistics.median(g), "fleet_cmd_rtt_p99_ms": _pct(g, 0.99),
            "fleet_cmd_rtt_sync_p50_ms": statistics.median(s),
            "fleet_cmd_rtt_sync_p99_ms": _pct(s, 0.99),
            "x_fleet_cmd_rtt_p50": statistics.median(s) / statistics.median(g),
            "fleet_cmd_n": n}


async def run(hs: DevServer, *, quick: bool) -> dict[str, float]:
    # ``hs`` is not used: the gateway needs a Synapse with its registration installed.
    with tempfile.TemporaryDirectory(prefix="mxsync-bench-fleetcmd-") as d:
        return await rtts(20 if quick else 100, Path(d))


async def _main(quick: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="mxsync-bench-fleetcmd-") as d:
        print(json.dumps(await rtts(20 if quick else 100, Path(d)), indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 commands of each, not 100")
    args = parser.parse_args()
    anyio.run(_main, args.quick)
