"""Commands to the devices of the appservice gateway, against a real Synapse.

Synapse serves no /sync to appservice users: it pushes the events of the
gateway's rooms to the registration's ``url`` (PUT /_matrix/app/v1/transactions),
where the gateway's endpoint (``mxsync.fleet.transactions``) hands them to the
devices' command inboxes. One devserver with the fleet's registration installed
(url: a loopback port) serves every test of this module; each test has its own
room, gateway store and devices.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from mxsync import Client, CommandExpired, CommandTimeout, ConfigError
from mxsync.dev import DevServer
from mxsync.dev.mosquitto import Mosquitto
from mxsync.dev.process import free_port, spawn
from mxsync.fleet import MqttBridge
from mxsync.fleet.appservice import FleetGateway, Registration
from mxsync.fleet.rooms import room_encrypted
from mxsync.protocol import api
from mxsync.protocol.commands import command_content
from mxsync.protocol.types import COMMAND

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class World:
    def __init__(self, hs: DevServer, reg: Registration, tmp: Path) -> None:
        self.hs, self.reg, self.tmp = hs, reg, tmp


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("fleet-commands")
    reg = Registration.generate("localhost", url=f"http://127.0.0.1:{free_port()}")
    reg_file = reg.write(tmp / "fleet.yaml")
    async with DevServer(tmp / "synapse", rate_limits="default",
                         app_services=[reg_file]) as hs:
        yield World(hs, reg, tmp)


@asynccontextmanager
async def dashboard(world: World, name: str) -> AsyncIterator[tuple[Client, str]]:
    """A dashboard that owns a new room, the gateway's sender in it at level 100."""
    creds = await world.hs.register(f"{name}{uuid.uuid4().hex[:6]}")
    await world.hs.override_ratelimit(creds.user_id)
    async with Client(world.hs.url, creds.user_id, password=creds.password,
                      store_path=world.tmp / f"{creds.user_id[1:8]}-{uuid.uuid4().hex}.db",
                      encryption=False) as dash:
        room = await dash.create_room(name, invite=[world.reg.sender])
        await dash.set_power_level(room, world.reg.sender, 100)
        yield dash, room


@asynccontextmanager
async def gateway(world: World, room: str, store: Path) -> AsyncIterator[FleetGateway]:
    reg = world.reg
    async with Client(world.hs.url, reg.sender, access_token=reg.as_token,
                      store_path=store, encryption=False, sync=False) as bot:
        await bot.request(api.join(room))
        async with FleetGateway(bot, reg, room) as gw:
            yield gw


async def serve(pub: Any, runs: list[str]) -> None:
    """A device's command handler: add answers the sum, anything else fails."""
    async for cmd in pub.commands():
        runs.append(cmd.id)
        if cmd.name == "add":
            await cmd.ok({"sum": cmd.args["a"] + cmd.args["b"], "by": cmd.sender})
        else:
            await cmd.fail(f"unknown command {cmd.name}")


async def push(world: World, txn_id: str, events: list[dict[str, Any]], *,
               token: str | None = None, query: bool = False) -> tuple[int, dict[str, Any]]:
    """PUT a transaction to the gateway's endpoint as the homeserver would."""
    url = f"{world.reg.url}/_matrix/app/v1/transactions/{txn_id}"
    token = world.reg.hs_token if token is None else token
    headers = {} if query else {"Authorization": f"Bearer {token}"}
    params = {"access_token": token} if query else {}
    async with aiohttp.ClientSession() as http, http.put(
            url, json={"events": events}, headers=headers, params=params) as resp:
        return resp.status, await resp.json()


def command_event(room: str, sender: str, device: str, cid: str, event_id: str,
                  ) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"room_id": room, "event_id": event_id, "sender": sender, "type": COMMAND,
            "origin_server_ts": now,
            "content": command_content(cid, device, "add", {"a": 1, "b": 1}, issued_ms=now,
                                       expires_ms=now + 60_000)}


async def test_a_command_to_a_gateway_device_comes_back_with_its_result(world: World):
    async with dashboard(world, "fleetcmd") as (dash, room), \
            gateway(world, room, world.tmp / f"gw-{uuid.uuid4().hex}.db") as gw:
        assert gw.endpoint is not None
        await gw.add_devices(["boiler", "valve"])
        runs: dict[str, list[str]] = {"boiler": [], "valve": []}
        async with gw.publisher("boiler", max_age=0.2) as boiler, \
                gw.publisher("valve", max_age=0.2) as valve, \
                dash.subscribe(room, live=False) as sub, anyio.create_task_group() as tg:
            tg.start_soon(serve, boiler, runs["boiler"])
            tg.start_soon(serve, valve, runs["valve"])
            with anyio.fail_after(60):
                assert await sub.command("boiler", "add", {"a": 2, "b": 3}, timeout=30) == {
                    "sum": 5, "by": dash.user_id}
                assert await sub.command("valve", "add", {"a": 4, "b": 5}, timeout=30) == {
                    "sum": 9, "by": dash.user_id}
            tg.cancel_scope.cancel()
        # Each device ran its own command once; the answer is the device user's.
        assert [len(runs["boiler"]), len(runs["valve"])] == [1, 1]
        page = await dash.messages(room, None, direction="b", limit=20,
                                   types=["org.mxsync.command.result"])
        assert {ev.sender for ev in page.events} == {world.reg.user_id("boiler"),
                                                     world.reg.user_id("valve")}
        stats = gw.endpoint.statistics()
        assert stats.transactions >= 2 and stats.refused == 0


@pytest.mark.parametrize("look_back", [0.0, 3600.0], ids=["retry-only", "retry-and-look-back"])
async def test_a_command_sent_while_the_gateway_is_down_runs_once_on_its_return(
        world: World, look_back: float):
    """Retry only: no look-back, and the device listens before the endpoint opens,
    so only Synapse's retry of the failed transaction (at once: the returning
    gateway pings) brings the command. Retry and look-back (the usual order:
    endpoint first): whichever brings it first, it runs once."""
    store = world.tmp / f"gw-{uuid.uuid4().hex}.db"
    async with dashboard(world, "fleetdown") as (dash, room):
        async with gateway(world, room, store) as gw:
            await gw.add_devices(["pump"])
            async with gw.publisher("pump", max_age=0.2):
                pass
        # The gateway is gone (its endpoint too): Synapse's push of the command fails
        # and it keeps the transaction, retrying with backoff.
        answer: list[Any] = []
        cid = f"while-down-{int(look_back)}"
        async with dash.subscribe(room, live=False) as sub, anyio.create_task_group() as tg:
            async def command() -> None:
                answer.append(await sub.command("pump", "add", {"a": 20, "b": 22},
                                                timeout=90, command_id=cid))

            tg.start_soon(command)
            await anyio.sleep(3)
            assert not answer
            runs: list[str] = []
            async with AsyncExitStack() as stack:
                bot = await stack.enter_async_context(Client(
                    world.hs.url, world.reg.sender, access_token=world.reg.as_token,
                    store_path=store, encryption=False, sync=False))
                gw = FleetGateway(bot, world.reg, room)
                pub = gw.publisher("pump", max_age=0.2, commands=True,
                                   command_look_back=look_back)
                for cm in ([pub, gw] if look_back == 0 else [gw, pub]):
                    await stack.enter_async_context(cm)
                assert gw.endpoint is not None
                device = await stack.enter_async_context(anyio.create_task_group())
                device.start_soon(serve, pub, runs)
                with anyio.fail_after(60):
                    while not answer:  # noqa: ASYNC110 - the command task's outcome
                        await anyio.sleep(0.05)
                assert answer == [{"sum": 42, "by": dash.user_id}]
                await anyio.sleep(2)  # a late repeat would run now
                device.cancel_scope.cancel()
        assert runs == [cid]


async def wait_output(out: Path, text: str, seconds: float = 60) -> str:
    with anyio.fail_after(seconds):
        while text not in (content := out.read_text()):  # noqa: ASYNC110 - a file, polled
            await anyio.sleep(0.05)
    return content


async def test_a_gateway_killed_mid_command_answers_interrupted_and_runs_the_next_once(
        world: World, tmp_path: Path):
    """kill -9 of the gateway process while a command runs, then a command sent while
    it is dead: on its return the first is answered "interrupted" (never run again)
    and the second, pushed again by Synapse, runs once."""
    proc_py = Path(__file__).with_name("fleet_device_proc.py")
    reg_file = world.tmp / "fleet.yaml"
    out = tmp_path / "device.out"
    store = tmp_path / "gw.db"
    procs: list[subprocess.Popen[bytes]] = []

    def start(phase: str) -> None:
        with open(out, "ab") as f:
            procs.append(spawn([sys.executable, str(proc_py), world.hs.url, str(reg_file),
                                room, str(store), phase], f,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}))

    async with dashboard(world, "fleetkill") as (dash, room), \
            dash.subscribe(room, live=False) as sub:
        try:
            start("first")
            await wait_output(out, "READY")
            outcome: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:
                async def command(cid: str, name: str) -> None:
                    try:
                        outcome[cid] = await sub.command("heater", name, {"a": 1, "b": 2},
                                                         timeout=90, command_id=cid)
                    except CommandExpired as exc:
                        outcome[cid] = exc.status

                tg.start_soon(command, "slow-1", "slow")
                await wait_output(out, "RUNNING slow-1")
                os.killpg(procs[0].pid, signal.SIGKILL)
                procs[0].wait(10)
                tg.start_soon(command, "add-1", "add")
                await anyio.sleep(3)  # sent, pushed to no one: Synapse keeps it
                start("resume")
                with anyio.fail_after(60):
                    while len(outcome) < 2:  # noqa: ASYNC110 - the command tasks' outcome
                        await anyio.sleep(0.05)
            assert outcome == {"slow-1": "interrupted", "add-1": {"sum": 3}}
            await anyio.sleep(2)  # a late repeat would show now
            text = out.read_text()
            assert text.count("RAN add-1") == 1 and text.count("RUNNING slow-1") == 1
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)


async def test_replayed_and_forged_transactions_run_nothing_twice_or_unauthorised(
        world: World):
    store = world.tmp / f"gw-{uuid.uuid4().hex}.db"
    async with dashboard(world, "fleetreplay") as (dash, room):
        reader = await world.hs.register(f"reader{uuid.uuid4().hex[:6]}")
        await dash.invite(room, reader.user_id)
        async with Client(world.hs.url, reader.user_id, password=reader.password,
                          store_path=None, encryption=False) as rc:
            await rc.join(room)
        runs: list[str] = []
        ours = command_event(room, dash.user_id, "fan", "replay-1", f"$replay{uuid.uuid4().hex}")
        for phase in ("first", "restarted"):
            async with gateway(world, room, store) as gw:
                if phase == "first":
                    await gw.add_devices(["fan"])
                async with gw.publisher("fan", max_age=0.2) as pub, \
                        anyio.create_task_group() as tg:
                    tg.start_soon(serve, pub, runs)
                    assert gw.endpoint is not None
                    inbox = pub._inbox
                    assert inbox is not None
                    with anyio.fail_after(30):
                        # The homeserver's txn id again (a lost 200): acknowledged, not run.
                        for _ in range(2):
                            assert await push(world, "txn-replay", [ours]) == (200, {})
                        # The same event under another txn id: the inbox knows its id.
                        assert await push(world, f"txn-other-{phase}", [ours]) == (200, {})
                        # A command of a sender without the power level: ignored.
                        forged = command_event(room, reader.user_id, "fan", f"forged-{phase}",
                                               f"$forged{uuid.uuid4().hex}")
                        assert await push(world, f"txn-forged-{phase}", [forged]) == (200, {})
                        while inbox.ignored == 0:  # noqa: ASYNC110
                            await anyio.sleep(0.05)
                        # Wrong or missing hs_token: refused, nothing read.
                        assert (await push(world, "txn-bad", [ours], token="wrong"))[0] == 403
                        status, body = await push(world, "txn-bad", [ours], token="wrong",
                                                  query=True)
                        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
                        await anyio.sleep(1)  # the inbox had its turn at everything
                    stats = gw.endpoint.statistics()
                    assert stats.refused == 2
                    assert stats.repeats == (1 if phase == "first" else 2)
                    tg.cancel_scope.cancel()
        assert runs == ["replay-1"]


async def test_the_gateway_refuses_an_encrypted_room_and_says_why(world: World):
    """The gateway cannot decrypt: a room with m.room.encryption gets no device
    (ConfigError naming the room and what to do), instead of commands that never arrive."""
    creds = await world.hs.register(f"e2eeops{uuid.uuid4().hex[:6]}")
    await world.hs.override_ratelimit(creds.user_id)
    reg = world.reg
    async with Client(world.hs.url, creds.user_id, password=creds.password,
                      store_path=world.tmp / f"ops-{uuid.uuid4().hex}.db") as ops:
        room = await ops.create_room("vault", invite=[reg.sender], encrypted=True)
        await ops.set_power_level(room, reg.sender, 100)
        async with Client(world.hs.url, reg.sender, access_token=reg.as_token,
                          store_path=world.tmp / f"gw-{uuid.uuid4().hex}.db",
                          encryption=False, sync=False) as bot:
            await bot.request(api.join(room))
            refused = f"room {re.escape(room)} is end-to-end encrypted.*unencrypted room"
            with pytest.raises(ConfigError, match=refused):
                await FleetGateway(bot, reg, room).add_devices(["vault"])
            with pytest.raises(ConfigError, match=refused):
                async with FleetGateway(bot, reg, room):
                    pass
        assert reg.user_id("vault") not in await ops.joined_members(room)


async def test_encryption_turned_on_in_a_fleet_room_is_reported_and_new_devices_go_elsewhere(
        world: World, caplog: pytest.LogCaptureFixture):
    """An operator turns encryption on in a shard the gateway made: the gateway logs
    it as an error, counts the encrypted command it cannot read (logged once, with
    the room), tells the room in an m.notice, and puts new devices in another shard."""
    creds = await world.hs.register(f"e2eeops{uuid.uuid4().hex[:6]}")
    await world.hs.override_ratelimit(creds.user_id)
    reg = world.reg
    group = f"e{uuid.uuid4().hex[:6]}"
    runs: list[str] = []
    async with Client(world.hs.url, creds.user_id, password=creds.password,
                      store_path=world.tmp / f"ops-{uuid.uuid4().hex}.db") as ops, \
            Client(world.hs.url, reg.sender, access_token=reg.as_token,
                   store_path=world.tmp / f"gw-{uuid.uuid4().hex}.db", encryption=False,
                   sync=False) as bot, \
            FleetGateway(bot, reg, room_size=5, operators=[ops.user_id]) as gw:
        assert gw.endpoint is not None
        await gw.add_devices(["lamp"], group=group)
        (shard,) = gw.groups()[group]
        assert not await room_encrypted(bot, shard)  # the gateway's rooms are cleartext
        await ops.join(shard)
        with caplog.at_level(logging.WARNING, logger="mxsync.fleet"):
            async with gw.publisher("lamp", max_age=0.2) as lamp, \
                    ops.subscribe(shard, live=False) as sub, anyio.create_task_group() as tg:
                tg.start_soon(serve, lamp, runs)
                with anyio.fail_after(60):
                    assert await sub.command("lamp", "add", {"a": 1, "b": 2}, timeout=30) == {
                        "sum": 3, "by": ops.user_id}
                    await ops.request(api.put_state(shard, "m.room.encryption", "",
                                                    {"algorithm": "m.megolm.v1.aes-sha2"}))
                    while gw.endpoint.statistics().encryption_enabled < 1:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                    while not await ops.is_encrypted(shard):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                    # The command now travels encrypted: the device cannot get it...
                    with pytest.raises(CommandTimeout):
                        await sub.command("lamp", "add", {"a": 2, "b": 2}, timeout=3)
                    # ...and the gateway says so instead of staying silent.
                    while gw.endpoint.statistics().encrypted < 1:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        assert len(runs) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(f"turned end-to-end encryption on in room {shard}" in m for m in errors)
        warned = [r.getMessage() for r in caplog.records
                  if f"room {shard} is end-to-end encrypted; skipping" in r.getMessage()]
        assert len(warned) == 1 and "Use an unencrypted room" in warned[0]
        # The room was told once, by the gateway's sender.
        page = await ops.messages(shard, None, direction="b", limit=50,
                                  types=["m.room.message"])
        notices = [ev for ev in page.events if ev.sender == reg.sender]
        assert len(notices) == 1 and notices[0].content["msgtype"] == "m.notice"
        assert "end-to-end encrypted" in notices[0].content["body"]
        # A new device does not go into the encrypted shard.
        await gw.add_devices(["lamp-2"], group=group)
        assert gw.encrypted_rooms == [shard]
        other = gw.room_of("lamp-2")
        assert other != shard and not await room_encrypted(bot, other)
        assert gw.groups()[group] == [shard, other]


async def test_mqtt_devices_behind_the_gateway_are_its_users_and_take_commands(
        world: World, tmp_path: Path):
    """The MQTT bridge on the gateway: a JSON device becomes its own appservice user
    when first seen, and a dashboard's command reaches it over MQTT and comes back."""
    devices = Path(__file__).with_name("mqtt_devices.py")
    out = tmp_path / "j1.out"
    proc: subprocess.Popen[bytes] | None = None
    async with dashboard(world, "fleetmqtt") as (dash, room), \
            gateway(world, room, tmp_path / "gw.db") as gw, \
            Mosquitto(tmp_path / "mosquitto") as broker, \
            dash.subscribe(room) as sub, \
            MqttBridge(gw, room, port=broker.port, offline_after=5,
                       publisher={"max_age": 0.2}) as bridge:
        try:
            with open(out, "wb") as f:
                proc = spawn([sys.executable, str(devices), "json", str(broker.port), "j1", "5"],
                             f, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            temps: list[Any] = []
            with anyio.fail_after(60):
                async for r in sub:
                    if r.device == "j1" and r.sensor == "temp":
                        temps.append(r.value)
                    if len(temps) == 5:
                        break
                while not ("j1" in sub.devices and sub.devices["j1"].online):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                assert await sub.command("j1", "ping", {"x": 7}, timeout=30) == {"pong": 7}
            assert temps == [200, 201, 202, 203, 204]
            page = await dash.messages(room, None, direction="b", limit=20,
                                       types=["org.mxsync.readings",
                                              "org.mxsync.command.result"])
            assert page.events
            assert {ev.sender for ev in page.events} == {world.reg.user_id("j1")}
            assert bridge.statistics().commands == 1
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
