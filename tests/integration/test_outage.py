"""A real outage: Synapse stopped for 20 s under two live clients, then restarted.

Runs its own DevServer (the session one is shared and must stay up). Proves
that nothing enqueued during the outage is lost or duplicated, that the sync
loop and the outbox back off instead of spinning, that status reports it, and
that the clients notice the restart through the liveness probe instead of
sleeping out a backoff of up to 30 s. Time-to-recover is printed (``-s``);
only a bound no sleeping client could meet reliably is asserted.
"""

from __future__ import annotations

import socket
import time

import anyio
import pytest

from mxsync import Client, OutgoingEvent
from mxsync.dev import DevServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

T = "org.mxsync.test"
OUTAGE_S = 20.0
#: Generous on purpose (a shared, loaded machine): recovery takes 1-3 s here,
#: while a client sleeping out its backoff takes up to 30 s.
RECOVERED_WITHIN_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _first_sync_after(client: Client, syncs: int, back: float, out: dict[str, float],
                            name: str) -> None:
    while client.status.syncs <= syncs:  # noqa: ASYNC110 (no event for "n-th sync")
        await anyio.sleep(0.05)
    out[name] = time.monotonic() - back


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
                down = time.monotonic()
                before = {"alice": alice.http.requests, "bob": bob.http.requests}
                probes_before = {"alice": alice.http.liveness.probes,
                                 "bob": bob.http.liveness.probes}
                handles = []
                for i in range(20):
                    handles += await alice.send_many([OutgoingEvent(room, T, {"i": i})])
                    await anyio.sleep(OUTAGE_S / 20)
                during = {
                    "alice": alice.http.requests - before["alice"],
                    "bob": bob.http.requests - before["bob"],
                }
                probes = {
                    "alice": alice.http.liveness.probes - probes_before["alice"],
                    "bob": bob.http.liveness.probes - probes_before["bob"],
                }
                outage = time.monotonic() - down
                assert alice.status.state == "backing_off"
                assert bob.status.state == "backing_off"
                assert bob.status.last_error
                assert not any(h.done for h in handles)
                syncs = {"alice": alice.status.syncs, "bob": bob.status.syncs}
                await hs.start()
                # Synapse answers /_matrix/client/versions from here on.
                back = time.monotonic()
                recovered: dict[str, float] = {}

                got = []
                with anyio.fail_after(90):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_first_sync_after, alice, syncs["alice"], back,
                                      recovered, "alice_sync")
                        tg.start_soon(_first_sync_after, bob, syncs["bob"], back,
                                      recovered, "bob_sync")
                        while len(got) < 20:
                            got.append((await recv.receive()).content["i"])
                            recovered.setdefault("first_event", time.monotonic() - back)
                        for h in handles:
                            await h.wait()
                        recovered["all_events"] = time.monotonic() - back
                with anyio.move_on_after(2):
                    extra = await recv.receive()
                    pytest.fail(f"duplicate after the outage: {extra.content}")
                assert alice.status.state == "synced" and bob.status.state == "synced"
                for c in (alice, bob):  # the probe saw the server down, then back
                    live = c.statistics().liveness
                    assert live.up is True and live.recoveries >= 1, live
    print(f"\nrequests during the {outage:.1f} s outage: {during}, of which probes {probes}; "
          f"seconds after restart: { {k: round(v, 2) for k, v in recovered.items()} }")
    assert got == list(range(20))
    # Backoff is capped at 30 s and starts at 0.25-0.5 s: each client's sync loop
    # makes about 6-8 attempts in 20 s, the outbox lane about as many, and the
    # client's one shared probe runs every 1.5-2 s. A spin would be thousands.
    for name in ("alice", "bob"):
        assert during[name] <= 30, during
        # One prober per client (not one per loop), never closer than 1.5 s apart.
        assert probes[name] <= outage / 1.5 + 1, probes
    assert recovered["all_events"] <= RECOVERED_WITHIN_S, recovered
