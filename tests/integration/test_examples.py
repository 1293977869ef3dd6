"""The examples without a browser, against a real Synapse: the whiteboard's
server (its y-websocket gateway, spoken to by a Python Yjs client) and
``mxsync demo`` end to end (the pure model: tests/unit).

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
from pathlib import Path

import aiohttp
import anyio
import pytest

from mxsync.dev.npm import node_available

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # ``examples`` is a folder of the checkout, not installed
    sys.path.insert(0, str(REPO))

from examples.whiteboard.build import BUNDLE, build  # noqa: E402
from examples.whiteboard.model import (  # noqa: E402
    BOARD_H,
    BOARD_W,
    Board,
)
from examples.whiteboard.server import DOC_NAME, WS_PATH, run_whiteboard  # noqa: E402
from tests.integration.yws import PyYjs  # noqa: E402
from tests.unit.test_examples_model import stroke  # noqa: E402

# --------------------------------------------------------------------------- whiteboard server


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_whiteboard_servers_relay_strokes_over_y_websocket_and_close_bad_sockets(
    make_user, make_client
):
    """Two users' whiteboard servers: a y-websocket client of alice's draws (the
    page's protocol, spoken here by pycrdt), bob's board shows the stroke; a
    garbage frame closes that socket only; presence is awareness, not the doc."""
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
        async with http.get(a_url + "api/config") as resp:
            config = await resp.json()
        assert config["user"] == alice.user_id and config["doc"] == DOC_NAME
        assert config["board"] == {"w": BOARD_W, "h": BOARD_H}
        ws_url = a_url.replace("http://", "ws://").rstrip("/") + f"{WS_PATH}/{DOC_NAME}"
        # Only the whiteboard's document is served.
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(ws_url + "-other")
        assert err.value.status == 404
        # Garbage closes that socket, with a log line; the server goes on.
        async with http.ws_connect(ws_url) as bad:
            await bad.receive_bytes(timeout=30)
            await bad.send_bytes(b"\x00\x01\xff\xff")
            with anyio.fail_after(10):
                while not bad.closed:
                    await bad.receive()
            assert bad.close_code == 1007
        async with PyYjs(http, ws_url) as page:
            with anyio.fail_after(30):
                await page.synced.wait()
            Board(page.doc, alice.user_id).draw(stroke("good1", 10, 20, 30, 40))
            with anyio.fail_after(30):
                while True:
                    async with http.get(b_url + "api/board") as resp:
                        board = await resp.json()
                    if [s["id"] for s in board["strokes"]] == ["good1"]:
                        break
                    await anyio.sleep(0.05)
            assert board["strokes"][0]["author"] == alice.user_id
            assert board["user"] == bob.user_id
        async with http.get(a_url + "api/stats") as resp:
            stats = await resp.json()
        assert stats["gateway"]["bad_frames"] == 1
        assert stats["doc"]["update_events_sent"] >= 1
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


async def _assert_stopped_cleanly(state: Path) -> None:
    """No process of the demo is left, and on Ctrl-C its devices marked themselves
    offline (the room says so)."""
    with anyio.fail_after(10):
        while leftovers := _processes_mentioning(str(state)):  # noqa: ASYNC110
            await anyio.sleep(0.1)
    assert not leftovers
    sensors_log = (state / "logs" / "sensors.log").read_text()
    for device in ("office", "greenhouse", "front-door"):
        assert f"sensors: {device} is offline (shutdown)" in sensors_log, sensors_log


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
        # The devices publish; the dashboard receives their readings: the three
        # Python devices (5 sensors) and the MQTT fleet through the bridge (two JSON
        # pumps with 2 sensors each, a Sparkplug node and its device with 1 each).
        dashboard = urls["dashboard (ops)"]
        mqtt = {"pump-1", "pump-2", "Plant/line1", "Plant/line1/press"}
        with anyio.fail_after(60):
            while True:
                state_json = json.loads((await _get(dashboard + "api/state"))[1])
                online = {d for d, st in state_json["devices"].items() if st["online"]}
                lasts = [s["last"] for s in state_json["sensors"].values() if s["last"]]
                if len(online - mqtt) == 3 and mqtt <= online and len(lasts) == 5 + 6:
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
    await _assert_stopped_cleanly(state)

    # A second run reuses the homeserver's port and the rooms, and stops by itself.
    saved = json.loads((state / "demo.json").read_text())
    demo = DemoRun(state, "--seconds", "1")
    demo.read_until(r"stopping in 1 s", 150)
    demo.finish(120)
    assert demo.proc.returncode == 0, "\n".join(demo.lines)
    assert json.loads((state / "demo.json").read_text()) == saved
    assert f"http://127.0.0.1:{saved['port']}" in demo.lines[0]
    with anyio.fail_after(10):
        while _processes_mentioning(str(state)):  # noqa: ASYNC110
            await anyio.sleep(0.1)


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_demo_whose_reader_died_stops_everything_on_ctrl_c(tmp_path):
    """``mxsync demo | tee demo.log``, tee dies, then Ctrl-C: the demo's prints
    fail with EPIPE, yet it stops its examples first (the devices go offline) and
    leaves no process behind."""
    state = tmp_path / "demo"
    demo = DemoRun(state)
    try:
        demo.read_until(r"Ctrl-C stops everything", 150)
        assert demo.proc.stdout is not None
        demo.proc.stdout.close()  # the reader is gone: every later print hits EPIPE
        demo.proc.send_signal(signal.SIGINT)
        demo.proc.wait(120)
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
            demo.proc.wait(10)
    assert demo.proc.returncode == 0
    await _assert_stopped_cleanly(state)
    logins = state / "logins.env"
    assert logins.stat().st_mode & 0o777 == 0o600
    assert "MXSYNC_USER=@ops:localhost" in logins.read_text()


# --------------------------------------------------------------------------- whiteboard bundle


@pytest.mark.timeout(600)
@pytest.mark.skipif(not node_available(), reason="needs node and npm")
def test_whiteboard_bundle_is_built_from_its_source(tmp_path):
    """static/whiteboard.js is what ``make whiteboard-js`` makes of web/ (npm yjs and
    y-websocket, pinned), and loads nothing from the internet."""
    out = build(tmp_path / "whiteboard.js")
    committed = BUNDLE.read_bytes()
    assert out.read_bytes() == committed, "run `make whiteboard-js` and commit the bundle"
    text = committed.decode()
    assert "WebsocketProvider" in text or "y-websocket" in text or "messageSync" in text
    # The only URL in it is a link in one of yjs's error messages.
    urls = set(re.findall(r"https?://[^\s\"'`)]+", text))
    assert urls <= {"https://github.com/yjs/yjs/issues/438"}, urls
