"""The appservice fleet gateway against a real Synapse with default rate limits.

The devserver installs the gateway's registration (``rate_limited: false``, the
``@dev_*`` namespace). One gateway process (tests/integration/gateway_proc.py)
publishes for many devices, each its own Matrix user, from one client; it is
killed with SIGKILL while its batches are being delivered and started again;
a dashboard gets every reading exactly once, in order per device, and each
event carries the time of its first reading (``?ts=``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from mxsync import Client
from mxsync.dev import DevServer
from mxsync.dev.process import spawn
from mxsync.fleet.appservice import Registration

pytestmark = [pytest.mark.anyio]

PROC = Path(__file__).with_name("gateway_proc.py")
REPO = Path(__file__).resolve().parents[2]
T0 = 1_760_000_000_000


def gateway(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    # spawn: its own process group, and SIGTERM should this test process die.
    with open(out, "ab") as f:
        return spawn([sys.executable, str(PROC), *args], f,
                     env={**os.environ, "PYTHONPATH": str(REPO)})


def outbox_rows(store: Path) -> int:
    with sqlite3.connect(store) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


async def run_fleet(tmp_path: Path, devices: int, readings: int, deadline: float) -> None:
    reg = Registration.generate("localhost")
    reg_file = reg.write(tmp_path / "fleet-registration.yaml")
    async with DevServer(tmp_path / "synapse", rate_limits="default",
                         app_services=[reg_file]) as hs:
        creds = await hs.register("dash")
        async with Client(hs.url, creds.user_id, password=creds.password,
                          store_path=tmp_path / "dash.db") as dash:
            room = await dash.create_room("fleet", invite=[reg.sender])
            await dash.set_power_level(room, reg.sender, 100)
            out = tmp_path / "gateway.out"
            store = tmp_path / "gateway.db"
            args = [hs.url, str(reg_file), room, str(store), str(devices),
                    str(readings)]
            total = devices * readings
            got: dict[str, list[tuple[int, int]]] = {}
            count = 0
            procs: list[subprocess.Popen[bytes]] = []
            try:
                async with dash.subscribe(room, buffer=1024) as sub:
                    procs.append(gateway([*args, "first"], out))
                    with anyio.fail_after(deadline):
                        killed = False
                        async for r in sub:
                            got.setdefault(r.device, []).append((r.t_ms, r.value))
                            count += 1
                            if not killed and "PERSISTED" in out.read_text():
                                os.killpg(procs[0].pid, signal.SIGKILL)
                                procs[0].wait(10)
                                killed = True
                                # Killed in the middle: batches were still to be sent.
                                unsent = await anyio.to_thread.run_sync(outbox_rows, store)
                                assert unsent > 0 and "DONE" not in out.read_text()
                                procs.append(gateway([*args, "resume"], out))
                            if count >= total:
                                break
                        while procs[-1].poll() is None:  # noqa: ASYNC110 - a child, polled
                            await anyio.sleep(0.1)
                    assert procs[-1].returncode == 0, out.read_text()[-2000:]
                    # Nothing more comes: no duplicate after the last reading.
                    with anyio.move_on_after(2):
                        async for r in sub:
                            got.setdefault(r.device, []).append((r.t_ms, r.value))
                            count += 1
                    stats = sub.statistics()
            finally:
                for p in procs:
                    if p.poll() is None:
                        os.killpg(p.pid, signal.SIGKILL)
                        p.wait(10)
            assert count == total
            assert sorted(got) == [f"d{i:04d}" for i in range(devices)]
            for i in range(devices):
                assert got[f"d{i:04d}"] == [(T0 + j, 1000 * i + j) for j in range(readings)]
            assert stats.duplicates == 0 and stats.missing_batches == 0
            # Each device is its own user; its batches carry the time they were measured.
            page = await dash.messages(room, None, direction="b", limit=50,
                                       types=["org.mxsync.readings"])
            assert page.events
            for ev in page.events:
                assert ev.sender == reg.user_id(ev.content["device"])
                assert ev.origin_server_ts == ev.content["t0_ms"]


@pytest.mark.timeout(300)
async def test_a_gateway_of_50_devices_survives_kill_9_nothing_lost_or_duplicated(tmp_path):
    await run_fleet(tmp_path, devices=50, readings=400, deadline=200)


@pytest.mark.soak
@pytest.mark.timeout(7200)
async def test_soak_1000_devices_one_million_readings(tmp_path):
    """The issue's size. Run once here (2026-12-01, loaded machine): the 1,000 users
    were registered and joined in 244 s and the 1,000,000 readings persisted at
    262 s, but with 1,000 members in one room Synapse (SQLite) created about one
    event every 2 s, so 1,450 events (births, batches) would have taken ~50 min and
    290 last wills fired while their devices lived (their restarts lagged). Not
    completed; devices must be spread over rooms for this size (not done yet)."""
    await run_fleet(tmp_path, devices=1000, readings=1000, deadline=6000)
