"""The examples without a browser: the whiteboard's data model and server
protocol, the simulated devices, and ``mxsync demo`` end to end.

The demo test runs ``mxsync demo`` as a user does, against its own embedded
Synapse: every page answers, a reading reaches the dashboard, Ctrl-C stops
everything with no process left behind, and a second run (``--seconds``)
reuses the rooms and the homeserver's port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from pycrdt import Doc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``examples`` is a folder of the checkout, not installed
    sys.path.insert(0, str(REPO))

from examples.iot_sensor.simulate import Climate, Door, parse_devices  # noqa: E402
from examples.whiteboard.model import (  # noqa: E402
    BOARD_H,
    BOARD_W,
    PRESENCE_TIMEOUT_MS,
    Board,
    InvalidStroke,
    validate_stroke,
)
from examples.whiteboard.server import run_whiteboard  # noqa: E402


def stroke(sid: str, *points: int, color: str = "#112233", width: int = 3) -> dict[str, Any]:
    return {"id": sid, "color": color, "width": width, "points": list(points)}


def sync(*docs: Doc) -> None:
    """Exchange every update between the docs (what the room does)."""
    for a in docs:
        for b in docs:
            if a is not b:
                b.apply_update(a.get_update(b.get_state()))


# --------------------------------------------------------------------------- whiteboard model


def test_board_draw_undo_erase_clear_converge_between_two_users():
    da, db = Doc(), Doc()
    alice, bob = Board(da, "@alice:x"), Board(db, "@bob:x")
    alice.draw(stroke("a1", 1, 2, 3, 4))
    bob.draw(stroke("b1", 5, 6))
    alice.draw(stroke("a2", 7, 8))
    sync(da, db)
    assert alice.snapshot()["strokes"] == bob.snapshot()["strokes"]
    assert {s["id"] for s in bob.snapshot()["strokes"]} == {"a1", "b1", "a2"}
    # Points come back as ints, though pycrdt stores numbers as floats.
    a1 = next(s for s in bob.snapshot()["strokes"] if s["id"] == "a1")
    assert a1 == {"id": "a1", "author": "@alice:x", "color": "#112233", "width": 3,
                  "points": [1, 2, 3, 4]}
    assert all(type(v) is int for v in a1["points"])

    # Undo takes back the caller's own latest stroke, never someone else's.
    assert bob.undo() == "b1"
    assert bob.undo() is None
    sync(da, db)
    assert [s["id"] for s in alice.snapshot()["strokes"]] == ["a1", "a2"]
    assert alice.undo() == "a2"

    # Anyone may erase any stroke; erasing twice is harmless.
    sync(da, db)
    assert bob.erase("a1") is True
    assert bob.erase("a1") is False
    sync(da, db)
    assert alice.snapshot()["strokes"] == []


def test_board_clear_keeps_a_stroke_drawn_concurrently():
    da, db = Doc(), Doc()
    alice, bob = Board(da, "@alice:x"), Board(db, "@bob:x")
    alice.draw(stroke("a1", 1, 1))
    sync(da, db)
    alice.clear()
    bob.draw(stroke("b1", 2, 2))  # bob had not seen the clear
    sync(da, db)
    assert [s["id"] for s in alice.snapshot()["strokes"]] == ["b1"]
    assert alice.snapshot() == bob.snapshot()


def test_board_redrawing_the_same_stroke_id_is_a_no_op():
    doc = Doc()
    board = Board(doc, "@alice:x")
    board.draw(stroke("s1", 1, 1))
    board.draw(stroke("s1", 9, 9, color="#ffffff"))  # a page resending after a reconnect
    assert board.snapshot()["strokes"][0]["points"] == [1, 1]
    assert len(board.order) == 1


@pytest.mark.parametrize("bad", [
    None,
    [],
    stroke("", 1, 1),
    stroke("has space", 1, 1),
    stroke("s", 1, 1, color="red"),
    stroke("s", 1, 1, color="#12345"),
    stroke("s", 1, 1, width=0),
    stroke("s", 1, 1, width=65),
    {**stroke("s", 1, 1), "width": 2.5},
    {**stroke("s", 1, 1), "width": True},
    stroke("s"),
    stroke("s", 1, 2, 3),
    stroke("s", 1.5, 2),
    stroke("s", -1, 2),
    stroke("s", BOARD_W + 1, 2),
    stroke("s", 2, BOARD_H + 1),
    {**stroke("s", 1, 1), "points": "1,1"},
    stroke("s", *([1] * 8002)),
])
def test_board_refuses_malformed_strokes(bad):
    board = Board(Doc(), "@alice:x")
    with pytest.raises(InvalidStroke):
        board.draw(bad)
    assert board.snapshot()["strokes"] == []


def test_validate_stroke_normalises_the_colour():
    assert validate_stroke(stroke("s", 0, 0, color="#ABCDEF"))[1] == "#abcdef"


def test_presence_shows_users_with_an_open_page_and_a_recent_heartbeat():
    doc = Doc()
    alice, bob = Board(doc, "@alice:x"), Board(doc, "@bob:x")
    now = 1_700_000_000_000
    alice.set_presence(1, now_ms=now)
    bob.set_presence(2, now_ms=now - PRESENCE_TIMEOUT_MS - 1)  # its server died
    carol = Board(doc, "@carol:x")
    carol.set_presence(0, now_ms=now)  # closed her page
    assert alice.snapshot(now_ms=now)["presence"] == [
        {"user": "@alice:x", "pages": 1, "seen_ms": now}
    ]


def test_snapshot_survives_foreign_garbage_in_the_document():
    """Another client of the room may write anything into the shared doc."""
    doc = Doc()
    board = Board(doc, "@alice:x")
    board.draw(stroke("ok", 1, 1))
    board.strokes["junk"] = "not a stroke"
    board.strokes["nopoints"] = {"author": "@x:x"}
    board.strokes["orphan"] = {"author": "@x:x", "color": "#000000", "width": 2,
                               "points": [5, 5], "t": 1}
    board.order.append("missing")
    board.order.append(42)
    board.presence["@x:x"] = "garbage"
    snap = board.snapshot()
    assert [s["id"] for s in snap["strokes"]] == ["ok", "orphan"]
    assert snap["presence"] == []


# --------------------------------------------------------------------------- simulated devices


def test_climate_follows_a_daily_curve_with_realistic_values():
    day = datetime(2026, 6, 1)
    at = lambda hour: int(day.replace(hour=hour).timestamp() * 1000)  # noqa: E731
    office = Climate("office", mean_c=21.0, swing_c=2.5, humidity=45.0)

    def mean_at(hour: int) -> tuple[float, float]:
        temps, hums = [], []
        for i in range(600):  # ten minutes, one reading a second
            (t_sensor, temp, t_unit), (h_sensor, hum, h_unit) = office.sample(at(hour) + i * 1000)
            assert (t_sensor, t_unit, h_sensor, h_unit) == (
                "office/temperature", "Cel", "office/humidity", "%RH")
            assert round(temp, 2) == temp and round(hum, 1) == hum
            temps.append(temp)
            hums.append(hum)
        return sum(temps) / len(temps), sum(hums) / len(hums)

    night_t, night_h = mean_at(3)
    day_t, day_h = mean_at(15)
    assert 17.5 < night_t < 20.0 < 22.0 < day_t < 24.5
    assert day_h < night_h  # warmer air, lower relative humidity
    assert 20 < day_h < 70 and 20 < night_h < 70


def test_door_opens_now_and_then_and_closes_again():
    door = Door("front-door")
    states = [door.sample(i * 1000)[0][1] for i in range(3600)]
    assert all(isinstance(s, bool) for s in states)
    opened = sum(1 for a, b in zip(states, states[1:], strict=False) if not a and b)
    assert 5 <= opened <= 80
    assert sum(states) < len(states) * 0.3


def test_parse_devices():
    devices = parse_devices("office:climate, cellar ,back-door", seed=1)
    assert [(type(d).__name__, d.name) for d in devices] == [
        ("Climate", "office"), ("Climate", "cellar"), ("Door", "back-door")]
    with pytest.raises(ValueError):
        parse_devices("x:toaster")
    with pytest.raises(ValueError):
        parse_devices(" , ")


# --------------------------------------------------------------------------- whiteboard server


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_whiteboard_servers_relay_strokes_and_refuse_bad_messages(make_user, make_client):
    a_creds = await make_user("alice", relaxed=True)
    b_creds = await make_user("bob", relaxed=True)
    alice = await make_client(a_creds)
    bob = await make_client(b_creds)
    room = await alice.create_room("wb", invite=[bob.user_id])
    async with anyio.create_task_group() as tg, aiohttp.ClientSession() as http:
        a_url = await tg.start(lambda task_status: run_whiteboard(alice, room,
                                                                  task_status=task_status))
        b_url = await tg.start(lambda task_status: run_whiteboard(bob, room,
                                                                  task_status=task_status))
        async with http.get(a_url) as resp:
            assert resp.status == 200
            assert "<canvas" in await resp.text()
        for asset in ("whiteboard.js", "style.css"):
            async with http.get(f"{a_url}static/{asset}") as resp:
                assert resp.status == 200
        async with http.ws_connect(a_url + "ws") as ws:
            hello = await ws.receive_json(timeout=10)
            assert hello["type"] == "hello" and hello["user"] == alice.user_id
            assert hello["board"] == {"w": BOARD_W, "h": BOARD_H}
            for bad, why in (
                ("not json", "not JSON"),
                (json.dumps(["op"]), "object"),
                (json.dumps({"op": "fly"}), "unknown op"),
                (json.dumps({"op": "stroke", "stroke": stroke("s", 1.5, 2)}), "refused"),
            ):
                await ws.send_str(bad)
                with anyio.fail_after(10):
                    while (msg := await ws.receive_json())["type"] != "error":
                        pass
                assert why in msg["message"]
            await ws.send_json({"op": "stroke", "stroke": stroke("good1", 10, 20, 30, 40)})
            with anyio.fail_after(30):
                while True:
                    async with http.get(b_url + "api/board") as resp:
                        board = await resp.json()
                    if [s["id"] for s in board["strokes"]] == ["good1"]:
                        break
                    await anyio.sleep(0.05)
            assert board["strokes"][0]["author"] == alice.user_id
            assert board["user"] == bob.user_id
            assert alice.user_id in [p["user"] for p in board["presence"]]
        # Alice's only page closed: bob's board no longer shows her.
        with anyio.fail_after(30):
            while True:
                async with http.get(b_url + "api/board") as resp:
                    board = await resp.json()
                if alice.user_id not in [p["user"] for p in board["presence"]]:
                    break
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()


# --------------------------------------------------------------------------- mxsync demo


def _processes_mentioning(text: str) -> dict[int, str]:
    """Live processes whose command line mentions ``text`` (zombies excluded)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if text in cmdline and stat.rpartition(")")[2].split()[0] != "Z":
            found[int(proc.name)] = cmdline
    return found


class DemoRun:
    """``mxsync demo`` in a subprocess, its output collected line by line."""

    def __init__(self, state_dir: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mxsync", "demo", "--state-dir", str(state_dir), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        )
        self.lines: list[str] = []

    def read_until(self, pattern: str, seconds: float) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            if m := re.search(pattern, line):
                return m
        pytest.fail(f"no {pattern!r} in the demo's output:\n" + "\n".join(self.lines))

    def urls(self) -> dict[str, str]:
        urls = {}
        for line in self.lines:
            if m := re.match(r"(whiteboard \(\w+\)|dashboard \(\w+\))\s+(http://\S+)", line):
                urls[m[1]] = m[2]
        return urls

    def finish(self, seconds: float) -> str:
        out, _ = self.proc.communicate(timeout=seconds)
        self.lines.extend(out.splitlines())
        return out


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_demo_serves_every_page_and_stops_without_leftovers(tmp_path):
    state = tmp_path / "demo"
    demo = DemoRun(state)
    try:
        demo.read_until(r"Ctrl-C stops everything", 150)
        urls = demo.urls()
        assert set(urls) == {"whiteboard (alice)", "whiteboard (bob)", "dashboard (ops)"}
        assert any("homeserver" in line and "lifted for alice" in line for line in demo.lines)
        children = _processes_mentioning(str(state))
        # Synapse, the sensors, the dashboard and two whiteboards.
        assert len(children) >= 5, children
        for name, url in urls.items():
            status, text = await _get(url)
            assert status == 200, name
            assert "<script" in text
        # The devices publish; the dashboard receives their readings.
        dashboard = urls["dashboard (ops)"]
        with anyio.fail_after(60):
            while True:
                state_json = json.loads((await _get(dashboard + "api/state"))[1])
                online = [d for d, st in state_json["devices"].items() if st["online"]]
                lasts = [s["last"] for s in state_json["sensors"].values() if s["last"]]
                if len(online) == 3 and len(lasts) == 5:
                    break
                await anyio.sleep(0.2)
        # Both whiteboards use one room.
        rooms = {json.loads((await _get(urls[f"whiteboard ({u})"] + "api/board"))[1])["room"]
                 for u in ("alice", "bob")}
        assert len(rooms) == 1
    finally:
        if demo.proc.poll() is None:
            demo.proc.send_signal(signal.SIGINT)  # Ctrl-C
        demo.finish(120)
    assert demo.proc.returncode == 0, "\n".join(demo.lines)
    with anyio.fail_after(10):
        while leftovers := _processes_mentioning(str(state)):  # noqa: ASYNC110
            await anyio.sleep(0.1)
    assert not leftovers
    # On Ctrl-C the devices marked themselves offline (the room says so).
    sensors_log = (state / "logs" / "sensors.log").read_text()
    for device in ("office", "greenhouse", "front-door"):
        assert f"sensors: {device} is offline (shutdown)" in sensors_log, sensors_log

    # A second run reuses the homeserver's port and the rooms, and stops by itself.
    saved = json.loads((state / "demo.json").read_text())
    demo = DemoRun(state, "--seconds", "1")
    demo.read_until(r"stopping in 1 s", 150)
    demo.finish(120)
    assert demo.proc.returncode == 0, "\n".join(demo.lines)
    assert json.loads((state / "demo.json").read_text()) == saved
    assert f"http://127.0.0.1:{saved['port']}" in demo.lines[0]
    with anyio.fail_after(10):
        while leftovers := _processes_mentioning(str(state)):  # noqa: ASYNC110
            await anyio.sleep(0.1)
