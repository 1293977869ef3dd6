"""The fleet gateway as a child process, so that a test can kill -9 it.

``python gateway_proc.py HS_URL REGISTRATION ROOM STORE DEVICES READINGS first|resume``

ROOM is a room id (every device in it) or ``rooms:SIZE:OPERATOR``: the gateway
makes the fleet's rooms, SIZE devices each, OPERATOR invited to each; it prints
``ROOMS`` and their ids as JSON once the devices are in.

first: join the room (one-room case) as the appservice sender, add the device
users, publish READINGS readings per device (value ``1000 * d + j``, time
``T0 + j``), persist them (prints ``PERSISTED``), deliver them (prints
``DONE`` and the last wills' statistics). resume: add the devices again (they
are found where they are), open the same publishers from the store and deliver
what is left (prints ``DONE``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anyio

from mxsync import Client, Reading
from mxsync.fleet.appservice import FleetGateway, Registration
from mxsync.protocol import api

T0 = 1_760_000_000_000


async def main(url: str, reg_path: str, room: str, store: str, n: int, r: int,
               phase: str) -> None:
    reg = Registration.load(Path(reg_path))
    async with Client(url, reg.sender, access_token=reg.as_token, store_path=store,
                      encryption=False) as client:
        if room.startswith("rooms:"):
            _, size, operator = room.split(":", 2)
            gw = FleetGateway(client, reg, room_size=int(size), operators=[operator])
        else:
            gw = FleetGateway(client, reg, room)
        devices = [f"d{i:04d}" for i in range(n)]
        start = time.monotonic()
        if phase == "first" and not room.startswith("rooms:"):
            await client.request(api.join(room))
        if phase == "first" or room.startswith("rooms:"):
            await gw.add_devices(devices)
        print(f"devices added at {time.monotonic() - start:.1f}s", flush=True)
        print("ROOMS " + json.dumps(gw.rooms), flush=True)
        async with gw.publishers(devices, offline_after=120, max_age=0.5) as by_device:
            pubs = [by_device[d] for d in devices]
            print(f"publishers open at {time.monotonic() - start:.1f}s", flush=True)
            if phase == "first":
                for i, pub in enumerate(pubs):
                    pub.publish_many(Reading("count", T0 + j, 1000 * i + j) for j in range(r))
                for pub in pubs:
                    await pub.persist()
                print(f"PERSISTED at {time.monotonic() - start:.1f}s", flush=True)
            for pub in pubs:
                await pub.flush()
            # Batches the killed run had handed to the outbox are the outbox's, not
            # the publishers' (Publisher.flush does not wait for them).
            await client.outbox.flush()
            stats = [p.statistics() for p in pubs]
            wills = {"restarts": sum(s.will_restarts for s in stats),
                     "restart_failures": sum(s.will_restart_failures for s in stats),
                     "rebirths": sum(s.will_rebirths for s in stats)}
            print(f"DONE at {time.monotonic() - start:.1f}s wills {json.dumps(wills)}",
                  flush=True)
        print(f"CLOSED at {time.monotonic() - start:.1f}s", flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    anyio.run(main, a[0], a[1], a[2], a[3], int(a[4]), int(a[5]), a[6])
