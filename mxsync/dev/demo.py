"""The demo (``mxsync demo``, ``make demo``): the examples together on an embedded homeserver.

One process tree:

- the embedded Synapse (:class:`~mxsync.dev.DevServer`, state in
  ``<state-dir>/devserver``, Synapse's default rate limits);
- demo users ``alice`` and ``bob`` (whiteboard), ``plant`` (the devices) and
  ``ops`` (the dashboard, a reader), registered on every start (idempotent);
- two rooms, created on the first start and reused afterwards: "Whiteboard"
  and "Plant sensors" (``<state-dir>/demo.json`` keeps their ids and the
  homeserver's port: the clients' stores are bound to the homeserver's URL);
- four child processes, each an example run as its users would run it, with
  the same Python: ``examples.iot_sensor.sensor``, ``examples.iot_sensor.dashboard``
  and ``examples.whiteboard`` twice (alice's and bob's). Their output goes to
  ``<state-dir>/logs/``;
- a device fleet that speaks MQTT: a Mosquitto (:class:`~mxsync.dev.mosquitto.Mosquitto`,
  a free loopback port), ``mxsync fleet bridge`` (as ``plant``, its own store)
  relaying into the sensors room, and ``examples.iot_sensor.mqtt_fleet`` (two JSON
  pumps, a Sparkplug B node with a device), on the same dashboard.

It writes the demo users' logins to ``<state-dir>/logins.env`` (mode 0600, the
``MXSYNC_*`` lines the ``mxsync`` command reads) and prints one line per page
with its URL once every page answers. Its output may go nowhere at any time (a
``| tee`` that died): a print never fails, and never stands in the way of
stopping. Ctrl-C (or
SIGTERM, or ``--seconds``) stops the children first (SIGINT, so that the
devices mark themselves offline while the homeserver still runs; SIGKILL to
their process group after a grace period), then the homeserver. Each child
runs in its own process group and, on Linux, gets SIGTERM if the demo itself
dies (``PR_SET_PDEATHSIG``): nothing is left behind.

The examples live in the source checkout (``examples/`` next to ``mxsync/``);
the demo needs one (``pip install -e .``, as ``make`` does). The command's
flags and signal handling are :mod:`mxsync.cli.demo`'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import anyio

from ..client import Client
from ..errors import DemoError, MxsyncError
from .mosquitto import Mosquitto
from .process import free_port, port_free, signal_group, spawn, wait_until
from .server import Credentials, DevServer

__all__ = ["DEFAULT_STATE_DIR", "run_demo", "sayer", "write_logins"]

#: The source checkout: two directories above this mxsync/dev/.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = Path(".mxsync/demo")
STARTUP_SECONDS = 90.0
STOP_GRACE_SECONDS = 20.0
#: Demo users whose message rate limit the demo lifts. Under Synapse's default
#: (0.2 events/s, burst 10) nothing is lost, but a stroke drawn after a burst
#: waits seconds for its turn, and three devices share one event every 5 s,
#: so each chart would move every ~15 s instead of every second.
LIFTED = ("alice", "bob", "plant")
USERS = ("alice", "bob", "plant", "ops")


@dataclass
class Child:
    """One example process."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str | None = None
    reported: bool = False


def _examples_root() -> Path:
    if not (SOURCE_ROOT / "examples" / "whiteboard").is_dir():
        raise DemoError(
            f"the examples are not next to the mxsync package ({SOURCE_ROOT}/examples); "
            "run the demo from a source checkout installed with `pip install -e .`"
        )
    return SOURCE_ROOT


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


class Children:
    """The demo's child processes: started in their own process group, always stopped."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[Child] = []

    def start(self, name: str, module: str, args: list[str], password: str) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name.replace(' ', '-').replace('(', '').replace(')', '')}.log"
        # The password goes through the environment: the command line is public.
        env = {**self.env, "MXSYNC_PASSWORD": password}
        with log.open("ab") as out:
            proc = spawn([sys.executable, "-m", module, *args], out, env=env)
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise DemoError(
                    f"{child.name} exited with code {code}; end of {child.log}:\n"
                    f"{_tail(child.log)}"
                )

    def report_exits(self, say: Callable[[str], None]) -> None:
        """Say once for each child that exited; the others keep running."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None and not child.reported:
                child.reported = True
                say(f"{child.name} exited with code {code} (its log: {child.log}); "
                    "the rest keeps running")

    async def stop(self) -> None:
        """SIGINT every child (a clean stop), SIGKILL their groups after a grace period."""
        with anyio.CancelScope(shield=True):
            live = [c for c in self.children if c.proc.poll() is None]
            for child in live:
                signal_group(child.proc, signal.SIGINT)
            await wait_until(lambda: all(c.proc.poll() is not None for c in live),
                             STOP_GRACE_SECONDS, 0.1)
            for child in live:
                # Also reaps anything the child left in its group.
                signal_group(child.proc, signal.SIGKILL, even_if_exited=True)
                if child.proc.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.proc.wait(5)


async def _wait_page(children: Children, child: Child, deadline: float) -> None:
    assert child.url is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            children.check_alive()
            try:
                async with http.get(child.url + "healthz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise DemoError(f"{child.name} did not answer at {child.url} within "
                                f"{STARTUP_SECONDS:g} s; end of {child.log}:\n{_tail(child.log)}")
            await anyio.sleep(0.2)


async def _wait_output(children: Children, child: Child, marker: str, deadline: float) -> None:
    while marker not in child.log.read_text(errors="replace"):
        children.check_alive()
        if time.monotonic() > deadline:
            raise DemoError(f"{child.name} did not start within {STARTUP_SECONDS:g} s; "
                            f"end of {child.log}:\n{_tail(child.log)}")
        await anyio.sleep(0.2)


def _load_saved(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _homeserver_port(state_dir: Path, saved: dict[str, Any]) -> int:
    """The port of the last run if it is free; else a new one, and the client
    stores (bound to the old URL) are set aside."""
    port = saved.get("port")
    if isinstance(port, int) and 0 < port < 65536 and port_free(port):
        return port
    for name in USERS:
        for store in state_dir.glob(f"{name}.db*"):
            store.replace(store.with_name(store.name + ".old"))
    return free_port()


async def _rooms(
    hs: DevServer, saved: dict[str, Any], creds: dict[str, Credentials]
) -> tuple[dict[str, str], set[str]]:
    """The demo rooms, and which of them are new: reused when the homeserver
    still has them, else created."""
    known = saved.get("rooms")
    if not isinstance(known, dict):
        known = {}
    rooms: dict[str, str] = {}
    created: set[str] = set()
    for key, owner, guest, writers, title in (
        ("whiteboard", "alice", "bob", ["alice", "bob"], "Whiteboard"),
        ("sensors", "plant", "ops", ["plant"], "Plant sensors"),
    ):
        c = creds[owner]
        async with Client(hs.url, c.user_id, access_token=c.access_token) as client:
            room = known.get(key)
            if isinstance(room, str):
                try:
                    rooms[key] = await client.join(room)
                    continue
                except MxsyncError:
                    pass  # the homeserver's state was reset: make a new room
            rooms[key] = await client.create_room(
                title, invite=[creds[guest].user_id],
                writers=[creds[w].user_id for w in writers], topic="created by mxsync demo",
            )
            created.add(key)
    return rooms, created


def sayer(out: TextIO) -> Callable[[str], None]:
    """``say(line)``: print a line to ``out``; once nobody reads it any more (a closed
    pipe), say nothing: stopping must not fail on a print."""
    closed = False

    def say(line: str) -> None:
        nonlocal closed
        if closed:
            return
        try:
            print(line, file=out, flush=True)
        except (BrokenPipeError, ValueError):  # ValueError: ``out`` was closed
            closed = True

    return say


def write_logins(path: Path, url: str, creds: dict[str, Credentials]) -> None:
    """The demo users' logins, mode 0600, as ``mxsync`` reads them from the environment."""
    lines = [f"# Logins of the mxsync demo's users on {url} (a dev server: do not reuse).",
             "# One user's, for the mxsync command: "
             "export $(mxsync devserver user add NAME --state-dir <demo>/devserver)"]
    for name, c in creds.items():
        lines += [f"# {name}", f"MXSYNC_HOMESERVER={url}", f"MXSYNC_USER={c.user_id}",
                  f"MXSYNC_PASSWORD={c.password}"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)  # an older file kept its mode


def _start_examples(children: Children, hs: DevServer, state_dir: Path,
                    rooms: dict[str, str], created: set[str],
                    creds: dict[str, Credentials]) -> tuple[Child, list[Child]]:
    """Start the sensors and the three pages; return them."""
    def login(name: str) -> list[str]:
        return ["--homeserver", hs.url, "--user", creds[name].user_id,
                "--store", str(state_dir / f"{name}.db")]

    # A new sensors room gets an hour of simulated history, so that the
    # dashboard has something to show at once.
    backfill = ["--backfill", "60"] if "sensors" in created else []
    sensors = children.start("sensors", "examples.iot_sensor.sensor",
                             [*login("plant"), "--room", rooms["sensors"], *backfill],
                             creds["plant"].password)
    pages: list[Child] = []
    for title, module, name, room in (
        ("whiteboard (alice)", "examples.whiteboard", "alice", rooms["whiteboard"]),
        ("whiteboard (bob)", "examples.whiteboard", "bob", rooms["whiteboard"]),
        ("dashboard (ops)", "examples.iot_sensor.dashboard", "ops", rooms["sensors"]),
    ):
        port = free_port()
        child = children.start(title, module,
                               [*login(name), "--room", room, "--port", str(port)],
                               creds[name].password)
        child.url = f"http://127.0.0.1:{port}/"
        pages.append(child)
    return sensors, pages


async def _start_mqtt_fleet(children: Children, hs: DevServer, state_dir: Path,
                            rooms: dict[str, str], creds: dict[str, Credentials],
                            port: int) -> None:
    """The MQTT bridge (as ``plant``, its own store), then the MQTT devices."""
    bridge = children.start(
        "mqtt bridge", "mxsync",
        ["fleet", "bridge", rooms["sensors"], "--mqtt-port", str(port),
         "--homeserver", hs.url, "--user", creds["plant"].user_id,
         "--store", str(state_dir / "plant-bridge.db")],
        creds["plant"].password)
    deadline = time.monotonic() + STARTUP_SECONDS
    await _wait_output(children, bridge, "relaying", deadline)
    fleet = children.start("mqtt fleet", "examples.iot_sensor.mqtt_fleet",
                           ["--port", str(port)], "")
    await _wait_output(children, fleet, "publishing", deadline)


async def _serve(children: Children, sensors: Child, pages: list[Child], logins: Path,
                 seconds: float | None, say: Callable[[str], None]) -> None:
    """Wait for every page, say where they are, run until cancelled or ``seconds``."""
    deadline = time.monotonic() + STARTUP_SECONDS
    await _wait_output(children, sensors, "publishing", deadline)
    for child in pages:
        await _wait_page(children, child, deadline)
    for child in pages:
        say(f"{child.name:<19} {child.url}")
    say(f"{'sensors (plant)':<19} office, greenhouse, front-door publishing every 1 s"
        f" (pid {sensors.proc.pid}; `kill -INT {sensors.proc.pid}` takes them offline)")
    say(f"{'logins':<19} {logins} (0600; users {', '.join(USERS)})")
    say(f"{'':<19} e.g. export $(mxsync devserver user add {USERS[-1]} "
        f"--state-dir {logins.parent / 'devserver'})")
    say(f"{'logs':<19} {children.log_dir}")
    say("Ctrl-C stops everything." if seconds is None
        else f"stopping in {seconds:g} s (or Ctrl-C).")
    with anyio.move_on_after(math.inf if seconds is None else seconds):
        while True:
            # A child stopped by hand (the sensors, to watch the dashboard)
            # is reported; the demo goes on.
            children.report_exits(say)
            await anyio.sleep(0.5)


async def run_demo(state_dir: Path, seconds: float | None = None,
                   out: TextIO = sys.stdout) -> None:
    """Run the demo until cancelled, or for ``seconds`` once every page answers."""
    root = _examples_root()
    state_dir = Path(await anyio.Path(state_dir).absolute())
    await anyio.Path(state_dir).mkdir(parents=True, exist_ok=True)
    say = sayer(out)
    saved_path = state_dir / "demo.json"
    saved = _load_saved(saved_path)
    port = _homeserver_port(state_dir, saved)
    async with DevServer(state_dir / "devserver", port=port, rate_limits="default") as hs:
        creds = {name: await hs.register(name) for name in USERS}
        for name in LIFTED:
            await hs.override_ratelimit(creds[name].user_id)
        rooms, created = await _rooms(hs, saved, creds)
        saved_path.write_text(json.dumps({"port": port, "rooms": rooms}, indent=2))
        logins = state_dir / "logins.env"
        write_logins(logins, hs.url, creds)
        say(f"homeserver          {hs.url}  (Synapse; default rate limits, "
            f"lifted for {', '.join(LIFTED)}; state in {state_dir})")
        say(f"{'rooms':<19} sensors {rooms['sensors']}  whiteboard {rooms['whiteboard']}")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        children = Children(state_dir / "logs", env)
        async with Mosquitto(state_dir / "mosquitto") as broker:
            try:
                sensors, pages = _start_examples(children, hs, state_dir, rooms, created,
                                                 creds)
                await _start_mqtt_fleet(children, hs, state_dir, rooms, creds, broker.port)
                say(f"{'mqtt fleet':<19} pump-1, pump-2 (JSON) and Plant/line1 (Sparkplug B)"
                    f" on mqtt://127.0.0.1:{broker.port}, relayed by `mxsync fleet bridge`")
                await _serve(children, sensors, pages, logins, seconds, say)
            finally:
                # The children first (their devices go offline while the homeserver
                # runs), and only then a word about it: a print may fail.
                await children.stop()
                say("stopped the examples; stopping the homeserver ...")
