"""A gateway device that takes commands, as a child process a test can kill -9.

``python fleet_device_proc.py HS_URL REGISTRATION ROOM STORE first|resume``

Logs in as the registration's sender, serves the homeserver's transactions at
the registration's url (FleetGateway), adds the device ``heater`` (first) and
runs its publisher. Commands: ``add`` prints ``RAN <id>`` and answers the sum;
``slow`` prints ``RUNNING <id>`` and never answers (a test kills it there).
Prints ``READY`` once the device takes commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from mxsync import Client
from mxsync.fleet.appservice import FleetGateway, Registration
from mxsync.protocol import api


async def main(url: str, reg_path: str, room: str, store: str, phase: str) -> None:
    reg = Registration.load(Path(reg_path))
    async with Client(url, reg.sender, access_token=reg.as_token, store_path=store,
                      encryption=False, sync=False) as client:
        if phase == "first":
            await client.request(api.join(room))
        async with FleetGateway(client, reg, room) as gw:
            if phase == "first":
                await gw.add_devices(["heater"])
            async with gw.publisher("heater", max_age=0.2, offline_after=120) as pub:
                print("READY", flush=True)
                async for cmd in pub.commands():
                    if cmd.name == "slow":
                        print(f"RUNNING {cmd.id}", flush=True)
                        await anyio.sleep_forever()
                    print(f"RAN {cmd.id}", flush=True)
                    await cmd.ok({"sum": cmd.args["a"] + cmd.args["b"]})


if __name__ == "__main__":
    a = sys.argv[1:]
    anyio.run(main, *a)
