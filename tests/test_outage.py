"""A real outage: Synapse stopped for 20 s under two live clients, then restarted.

Runs its own DevServer (the session one is shared and must stay up). Proves
that nothing enqueued during the outage is lost or duplicated, that the sync
loop and the outbox back off instead of spinning, and that status reports it.
"""

from __future__ import annotations

import socket

import anyio
import pytest

from mxsync import Client, OutgoingEvent
from mxsync.devserver import DevServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

T = "org.mxsync.test"
OUTAGE_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_outage_of_20s_loses_nothing_and_does_not_spin(tmp_path):
    async with DevServer(tmp_path / "hs", port=free_port(), rate_limits="relaxed") as hs:
        a = await hs.register("alice")
        b = await hs.register("bob")
        async with (
            Client(hs.url, a.user_id, password=a.password, store_path=tmp_path / "a.db") as alice,
            Client(hs.url, b.user_id, password=b.password, store_path=tmp_path / "b.db") as bob,
        ):
            room = await alice.create_room("outage", invite=[bob.user_id])
            await bob.join(room)
            async with bob.room_events(room, [T]) as recv:
                await (await alice.send(room, T, {"i": -1})).wait()
                with anyio.fail_after(30):
                    assert (await recv.receive()).content == {"i": -1}

                await hs.stop()
                before = {"alice": alice.http.requests, "bob": bob.http.requests}
                handles = []
                for i in range(20):
                    handles += await alice.send_many([OutgoingEvent(room, T, {"i": i})])
                    await anyio.sleep(OUTAGE_S / 20)
                during = {
                    "alice": alice.http.requests - before["alice"],
                    "bob": bob.http.requests - before["bob"],
                }
                assert alice.status.state == "backing_off"
                assert bob.status.state == "backing_off"
                assert bob.status.last_error
                assert not any(h.done for h in handles)
                await hs.start()

                got = []
                with anyio.fail_after(90):
                    while len(got) < 20:
                        got.append((await recv.receive()).content["i"])
                    for h in handles:
                        await h.wait()
                with anyio.move_on_after(2):
                    extra = await recv.receive()
                    pytest.fail(f"duplicate after the outage: {extra.content}")
    assert got == list(range(20))
    # Backoff is capped at 30 s and starts at 0.25-0.5 s: each client's sync loop
    # makes about 6-8 attempts in 20 s, the outbox lane about as many. A spin
    # would be thousands.
    assert during["bob"] <= 15, during
    assert during["alice"] <= 30, during
