"""The MQTT bridge against a real Mosquitto and a real Synapse.

Devices are child processes (tests/integration/mqtt_devices.py, paho-mqtt 2,
Sparkplug payloads by pysparkplug) so that they can be killed with SIGKILL:
the broker then publishes their last will, which the bridge turns into
"offline" in Matrix. A dashboard sees their readings, births and deaths, and
commands them (JSON round trip, Sparkplug NCMD/DCMD).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from mxsync.dev.mosquitto import Mosquitto
from mxsync.dev.npm import ensure_package_set, node_command
from mxsync.dev.process import spawn
from mxsync.errors import NodeUnavailable
from mxsync.fleet import MqttBridge

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

DEVICES = Path(__file__).with_name("mqtt_devices.py")


def start(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    # spawn: its own process group, and SIGTERM should this test process die.
    with open(out, "wb") as f:
        return spawn([sys.executable, str(DEVICES), *args], f,
                     env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def wait_output(out: Path, text: str, seconds: float = 30) -> str:
    with anyio.fail_after(seconds):
        while text not in (content := out.read_text()):  # noqa: ASYNC110 - a file, polled
            await anyio.sleep(0.05)
    return content


async def test_json_and_sparkplug_devices_through_the_bridge(
    make_user, make_client, tmp_path: Path
):
    dash_creds = await make_user("mdash", relaxed=True)
    gw_creds = await make_user("mgw", relaxed=True)
    dash = await make_client(dash_creds)
    room = await dash.create_room("mqtt fleet", invite=[gw_creds.user_id])
    gw = await make_client(gw_creds)
    await gw.join(room)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with Mosquitto(tmp_path / "mosquitto") as broker, \
                dash.subscribe(room) as sub, \
                MqttBridge(gw, room, port=broker.port, offline_after=5,
                           publisher={"max_age": 0.2}) as bridge:
            json_out, spb_out = tmp_path / "json.out", tmp_path / "spb.out"
            procs.append(start(["json", str(broker.port), "j1", "20"], json_out))
            procs.append(start(["spb", str(broker.port), "G1", "N1", "10"], spb_out))
            await wait_output(json_out, "READY")
            await wait_output(spb_out, "READY")
            # Every reading arrives: 20 x (temp, door) from j1; the node's birth values
            # (Temp 1, Count, Output/Setpoint) and 10 Counts by alias; the pump's two.
            got: dict[str, list] = {}
            with anyio.fail_after(60):
                async for r in sub:
                    got.setdefault(r.device, []).append((r.sensor, r.value))
                    if (len(got.get("j1", ())) >= 40 and len(got.get("G1/N1", ())) >= 13
                            and len(got.get("G1/N1/pump", ())) >= 2):
                        break
            assert [v for s, v in got["j1"] if s == "temp"] == list(range(200, 220))
            assert [v for s, v in got["j1"] if s == "door"] == [i % 2 == 0 for i in range(20)]
            node = got["G1/N1"]
            assert ("Temp_1", 21.3) in node  # a FLOAT metric, as its shortest decimal
            assert [v for s, v in node if s == "Count"] == list(range(11))
            assert got["G1/N1/pump"] == [("on", True), ("on", False)]
            with anyio.fail_after(30):
                while not all(d in sub.devices and sub.devices[d].online  # noqa: ASYNC110
                              for d in ("j1", "G1/N1", "G1/N1/pump")):
                    await anyio.sleep(0.05)
            # Commands: a JSON round trip, and Sparkplug NCMD / DCMD.
            with anyio.fail_after(60):
                assert await sub.command("j1", "ping", {"x": 7}) == {"pong": 7}
                res = await sub.command("G1/N1", "Output/Setpoint", {"value": 42})
                assert res == {"topic": "spBv1.0/G1/NCMD/N1"}
                await sub.command("G1/N1/pump", "on", {"value": True})
            content = await wait_output(spb_out, "CMD spBv1.0/G1/DCMD/N1/pump on=True")
            assert "CMD spBv1.0/G1/NCMD/N1 Output/Setpoint=42" in content
            # kill -9: the broker's last wills (status "offline", NDEATH) make them offline.
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            with anyio.fail_after(60):
                while any(sub.devices[d].online  # noqa: ASYNC110
                          for d in ("j1", "G1/N1", "G1/N1/pump")):
                    await anyio.sleep(0.05)
            assert {sub.devices[d].reason for d in ("j1", "G1/N1", "G1/N1/pump")} == {
                "last-will"}
            stats = bridge.statistics()
            assert stats.malformed == 0 and stats.refused == 0
            assert stats.readings == 40 + 13 + 2 and stats.deaths == 3
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


async def test_an_independent_sparkplug_client_through_the_bridge(
    make_user, make_client, tmp_path: Path
):
    """Eclipse Tahu's sparkplug-client (npm) as the edge node: its births, aliases,
    seq and bdSeq as it makes them, its NDEATH will on kill -9, and NCMD/DCMD to it."""
    try:
        modules = ensure_package_set("sparkplug")
    except NodeUnavailable as exc:
        pytest.skip(str(exc))
    dash_creds = await make_user("jdash", relaxed=True)
    gw_creds = await make_user("jgw", relaxed=True)
    dash = await make_client(dash_creds)
    room = await dash.create_room("js sparkplug", invite=[gw_creds.user_id])
    gw = await make_client(gw_creds)
    await gw.join(room)
    out = tmp_path / "js.out"
    proc: subprocess.Popen[bytes] | None = None
    try:
        async with Mosquitto(tmp_path / "mosquitto") as broker, \
                dash.subscribe(room) as sub, \
                MqttBridge(gw, room, port=broker.port, offline_after=5,
                           publisher={"max_age": 0.2}) as bridge:
            with open(out, "wb") as f:
                proc = spawn(
                    [*node_command(), str(Path(__file__).with_name("spb_node.js")),
                     str(broker.port), "Plant", "js1", "10"],
                    f, env={**os.environ, "NODE_PATH": str(modules)})
            await wait_output(out, "READY")
            got: dict[str, list] = {}
            with anyio.fail_after(60):
                async for r in sub:
                    got.setdefault(r.device, []).append((r.sensor, r.value))
                    if len(got.get("Plant/js1", ())) >= 13 and len(
                            got.get("Plant/js1/valve", ())) >= 2:
                        break
            node = got["Plant/js1"]
            assert ("Temp_1", 20.5) in node and ("Output/Setpoint", 0) in node
            assert [v for s, v in node if s == "Count"] == list(range(11))
            assert got["Plant/js1/valve"] == [("open", False), ("open", True)]
            with anyio.fail_after(60):
                await sub.command("Plant/js1", "Output/Setpoint", {"value": 7})
                await sub.command("Plant/js1/valve", "open", {"value": False})
            content = await wait_output(out, "CMD DCMD valve open=false")
            assert "CMD NCMD Output/Setpoint=7" in content
            os.killpg(proc.pid, signal.SIGKILL)
            with anyio.fail_after(60):
                while any(sub.devices[d].online  # noqa: ASYNC110
                          for d in ("Plant/js1", "Plant/js1/valve")):
                    await anyio.sleep(0.05)
            stats = bridge.statistics()
            assert stats.malformed == 0 and stats.rebirths_asked == 0
    finally:
        if proc is not None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
