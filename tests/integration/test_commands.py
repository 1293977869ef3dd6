"""Commands to devices against a real Synapse (PROTOCOL.md section 4).

A dashboard that owns the room sends commands with ``sub.command``; a device's
publisher takes them with ``pub.commands()`` and answers. Users are relaxed
(rate limit lifted) where the test is not about rate limits, to keep it short.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from mxsync import (
    Client,
    CommandExpired,
    CommandFailed,
    CommandTimeout,
    ConfigError,
    ForbiddenError,
    RoomEvent,
)
from mxsync.protocol.commands import command_content
from mxsync.protocol.types import COMMAND, COMMAND_RESULT

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


def now_ms() -> int:
    return int(time.time() * 1000)


async def command_room(make_user, make_client):
    dash_creds = await make_user("cdash", relaxed=True)
    dev_creds = await make_user("cdev", relaxed=True)
    dash = await make_client(dash_creds)
    room = await dash.create_room("commands", invite=[dev_creds.user_id])
    return dash, room, dev_creds


async def serve(pub, runs: list[str], gate: anyio.Event | None = None) -> None:
    """A device's command handler: add, boom, slow (waits for ``gate``)."""
    async for cmd in pub.commands():
        runs.append(cmd.id)
        if cmd.name == "add":
            await cmd.ok({"sum": cmd.args["a"] + cmd.args["b"], "by": cmd.sender})
        elif cmd.name == "slow":
            assert gate is not None
            await gate.wait()
            await cmd.ok("done")
        else:
            await cmd.fail(f"unknown command {cmd.name}")


async def test_round_trip_result_error_and_rebirth(make_user, make_client):
    dash, room, dev_creds = await command_room(make_user, make_client)
    dev = await make_client(dev_creds)
    await dev.join(room)
    runs: list[str] = []
    async with dash.subscribe(room) as sub, dev.publisher(room, device="boiler") as pub:
        pub.publish("temp", 21)
        await pub.flush()
        await pub.wait_online()
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, pub, runs)
            with anyio.fail_after(60):
                assert await sub.command("boiler", "add", {"a": 2, "b": 3}) == {
                    "sum": 5, "by": dash.user_id}
                with pytest.raises(CommandFailed) as failed:
                    await sub.command("boiler", "explode")
                assert failed.value.error == "unknown command explode"
                with pytest.raises(ConfigError):
                    await sub.command("boiler", "add", {"a": 0.5, "b": 1})
                # rebirth is answered by the publisher: a new birth, and the sensor again.
                assert sub.devices["boiler"].reason == "birth"
                assert await sub.command("boiler", "rebirth") is None
                while sub.devices["boiler"].reason != "rebirth":  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                assert sub.devices["boiler"].online
                sensor = await dash.state_event(room, "org.mxsync.sensor", "temp")
                assert sensor is not None and sensor.content["last"] == 21
            tg.cancel_scope.cancel()
    assert len(runs) == 2  # add and explode; neither rebirth nor the refused float
    assert pub._inbox is not None and pub._inbox.rebirths == 1


async def test_timeout_then_retry_runs_once(make_user, make_client):
    dash, room, dev_creds = await command_room(make_user, make_client)
    dev = await make_client(dev_creds)
    await dev.join(room)
    runs: list[str] = []
    gate = anyio.Event()
    async with dash.subscribe(room, live=False) as sub, \
            dev.publisher(room, device="valve") as pub:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, pub, runs, gate)
            with pytest.raises(CommandTimeout) as timed_out:
                await sub.command("valve", "slow", timeout=3, command_id="open-1")
            assert timed_out.value.command_id == "open-1"
            # The retry reaches the device while the first run is still going: not run again.
            with pytest.raises(CommandTimeout):
                await sub.command("valve", "slow", timeout=3, command_id="open-1")
            with anyio.fail_after(60):
                retry = anyio.Event()

                async def again() -> None:
                    assert await sub.command("valve", "slow", timeout=50,
                                             command_id="open-1") == "done"
                    retry.set()

                tg.start_soon(again)
                await anyio.sleep(1)
                gate.set()
                await retry.wait()
                # After the answer, a retry gets the same answer (from the room).
                assert await sub.command("valve", "slow", command_id="open-1") == "done"
            tg.cancel_scope.cancel()
    assert runs == ["open-1"]
    assert pub._inbox is not None


async def test_without_power_level_commands_are_refused_and_ignored(make_user, make_client):
    dash, room, dev_creds = await command_room(make_user, make_client)
    reader_creds = await make_user("creader", relaxed=True)
    await dash.invite(room, reader_creds.user_id)
    reader = await make_client(reader_creds)
    await reader.join(room)
    dev = await make_client(dev_creds)
    await dev.join(room)
    runs: list[str] = []
    async with reader.subscribe(room, live=False) as rsub, \
            dev.publisher(room, device="pump") as pub:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, pub, runs)
            with pytest.raises(ForbiddenError):
                await rsub.command("pump", "add", {"a": 1, "b": 1}, timeout=10)
            # Should such a command reach the device anyway, it is ignored (the second
            # line of defence, judged by the levels where it stands).
            inbox = pub._inbox
            assert inbox is not None
            forged = RoomEvent(room_id=room, event_id="$forged", sender=reader.user_id,
                               type=COMMAND, origin_server_ts=now_ms(),
                               content=command_content("forged-1", "pump", "add",
                                                       {"a": 1, "b": 1}, issued_ms=now_ms(),
                                                       expires_ms=now_ms() + 60_000))
            await inbox._on_command(forged, inbox._levels)
            assert inbox.ignored == 1
            # The owner may; its command comes out, the forged one never did.
            async with dash.subscribe(room, live=False) as sub:
                with anyio.fail_after(60):
                    assert (await sub.command("pump", "add", {"a": 1, "b": 2}))["sum"] == 3
            tg.cancel_scope.cancel()
    assert len(runs) == 1 and runs[0] != "forged-1"
    page = await dash.messages(room, None, direction="b", limit=100, types=[COMMAND])
    assert all(ev.sender == dash.user_id for ev in page.events)


async def test_an_offline_device_runs_on_return_within_expiry_only(
    hs, make_user, make_client, tmp_path: Path
):
    dash, room, dev_creds = await command_room(make_user, make_client)
    store = tmp_path / "device.db"

    def device() -> Client:
        return Client(hs.url, dev_creds.user_id, password=dev_creds.password,
                      store_path=store)

    async with device() as dev:
        await dev.join(room)
        async with dev.publisher(room, device="heater", offline_after=5) as pub:
            await pub.wait_online()
    # The device is away. One command with a long expiry, one with a short one.
    async with dash.subscribe(room, live=False) as sub:
        with pytest.raises(CommandTimeout):
            await sub.command("heater", "add", {"a": 20, "b": 1}, timeout=2,
                              command_id="warm", expiry=120)
        with pytest.raises(CommandTimeout):
            await sub.command("heater", "add", {"a": 1, "b": 1}, timeout=2,
                              command_id="late", expiry=1)
        await anyio.sleep(1.5)  # "late" is past its expiry now, "warm" is not
        runs: list[str] = []
        async with device() as dev, dev.publisher(room, device="heater",
                                                  offline_after=5) as pub:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, pub, runs)
                with anyio.fail_after(60):
                    assert (await sub.command("heater", "add", command_id="warm",
                                              timeout=50))["sum"] == 21
                    with pytest.raises(CommandExpired) as expired:
                        await sub.command("heater", "add", command_id="late", timeout=50)
                    assert expired.value.status == "expired"
                tg.cancel_scope.cancel()
        assert runs == ["warm"]
        # Restarted once more: the store remembers both, nothing runs again.
        runs.clear()
        async with device() as dev, dev.publisher(room, device="heater",
                                                  offline_after=5) as pub:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, pub, runs)
                await anyio.sleep(2)
                tg.cancel_scope.cancel()
        assert runs == []
    results = await dash.messages(room, None, direction="b", limit=100,
                                  types=[COMMAND_RESULT])
    # Each id has one answer (a retry that reached the device may have had it sent again).
    statuses = {(ev.content["id"], ev.content["status"]) for ev in results.events}
    assert statuses == {("late", "expired"), ("warm", "ok")}


async def test_a_run_cut_by_a_restart_is_answered_interrupted_never_run_again(
    hs, make_user, make_client, tmp_path: Path
):
    dash, room, dev_creds = await command_room(make_user, make_client)
    store = tmp_path / "device.db"

    def device() -> Client:
        return Client(hs.url, dev_creds.user_id, password=dev_creds.password,
                      store_path=store)

    taken: list[str] = []
    async with dash.subscribe(room, live=False) as sub:
        async with device() as dev:
            await dev.join(room)
            async with dev.publisher(room, device="press") as pub:

                async def take_and_hang() -> None:
                    async for cmd in pub.commands():
                        taken.append(cmd.id)  # starts running, never answers

                async with anyio.create_task_group() as tg:
                    tg.start_soon(take_and_hang)
                    with pytest.raises(CommandTimeout):
                        await sub.command("press", "stamp", timeout=3, command_id="stamp-1")
                    tg.cancel_scope.cancel()
        assert taken == ["stamp-1"]
        runs: list[str] = []
        async with device() as dev, dev.publisher(room, device="press") as pub:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, pub, runs)
                with anyio.fail_after(60), pytest.raises(CommandExpired) as cut:
                    await sub.command("press", "stamp", timeout=50, command_id="stamp-1")
                assert cut.value.status == "interrupted"
                tg.cancel_scope.cancel()
        assert runs == []
