"""mxsync.dev.DevServer and `mxsync devserver` against the real Synapse it starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from mxsync.dev import Credentials, DevServer, DevServerError, StateDirLocked
from mxsync.errors import ConfigError, LoginError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def hs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServer]:
    async with DevServer(tmp_path_factory.mktemp("devserver")) as server:
        yield server


# --------------------------------------------------------------------------- helpers


def pid_running(pid: int) -> bool:
    """True if ``pid`` runs; a zombie (nobody reaped it yet) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def wait_pid_gone(pid: int, seconds: float) -> None:
    with anyio.fail_after(seconds):
        while pid_running(pid):  # noqa: ASYNC110
            await anyio.sleep(0.1)


async def call(
    method: str, url: str, token: str | None = None, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


async def whoami(url: str, token: str) -> str:
    status, body = await call("GET", f"{url}/_matrix/client/v3/account/whoami", token)
    assert status == 200, body
    user_id: str = body["user_id"]
    return user_id


async def create_room(url: str, token: str) -> str:
    status, body = await call("POST", f"{url}/_matrix/client/v3/createRoom", token, {})
    assert status == 200, body
    room_id: str = body["room_id"]
    return room_id


async def send_burst(url: str, creds: Credentials, room_id: str, n: int = 20) -> list[int]:
    """Send ``n`` messages back to back; return the statuses up to the first 429.

    (Synapse holds every 429 for 0.5 s before answering, so stop there.)
    """
    statuses = []
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {creds.access_token}"}
    ) as session:
        for i in range(n):
            txn = uuid.uuid4().hex
            path = f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}"
            body = {"msgtype": "m.text", "body": f"message {i}"}
            async with session.put(url + path, json=body) as resp:
                statuses.append(resp.status)
            if statuses[-1] == 429:
                break
    return statuses


async def read_line(stream: Any, seconds: float) -> str:
    """One line from an anyio byte stream, within a deadline."""
    buf = b""
    with anyio.fail_after(seconds):
        while b"\n" not in buf:
            buf += await stream.receive()
    return buf.split(b"\n", 1)[0].decode()


# --------------------------------------------------------------------------- tests


def test_credentials_repr_hides_password_and_token() -> None:
    creds = Credentials("@a:localhost", "hunter2-pw", "syt_secret_token", "DEV", "http://x")
    text = repr(creds)
    assert "@a:localhost" in text and "DEV" in text
    assert "hunter2-pw" not in text and "syt_secret_token" not in text


async def test_startup_failure_shows_the_log_and_frees_the_state_dir(tmp_path: Path) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\necho 'boom: no synapse here' >&2\nexit 3\n")
    fake.chmod(0o755)
    state = tmp_path / "state"
    with pytest.raises(DevServerError, match=r"(?s)exited with code 3.*boom: no synapse here"):
        async with DevServer(state, python=str(fake)):
            pass
    assert not (state / "devserver.lock").exists()
    # The state dir keeps its server name: another one is refused before any I/O.
    with pytest.raises(ConfigError, match="belongs to server_name 'localhost'"):
        async with DevServer(state, server_name="example.org"):
            pass
    with pytest.raises(ConfigError):
        DevServer(state, rate_limits="none")  # type: ignore[arg-type]


async def test_versions_answer_and_delayed_events_are_enabled(hs: DevServer) -> None:
    assert hs.url.startswith("http://127.0.0.1:")
    assert hs.server_name == "localhost"
    assert hs.pid is not None and pid_running(hs.pid)
    status, body = await call("GET", f"{hs.url}/_matrix/client/versions")
    assert status == 200
    assert body["versions"]
    assert body["unstable_features"].get("org.matrix.msc4140") is True


async def test_register_gives_distinct_users_and_is_idempotent(hs: DevServer) -> None:
    alice = await hs.register("alice")
    bob = await hs.register("bob")
    assert (alice.user_id, bob.user_id) == ("@alice:localhost", "@bob:localhost")
    assert alice.access_token != bob.access_token
    assert alice.homeserver == hs.url

    again = await hs.register("alice")
    assert again.user_id == alice.user_id
    assert again.password == alice.password
    assert again.access_token != alice.access_token
    assert await whoami(hs.url, alice.access_token) == alice.user_id
    assert await whoami(hs.url, again.access_token) == alice.user_id

    with pytest.raises(LoginError):
        await hs.register("alice", "not-the-password")


async def test_admin_token_is_cached_and_is_an_admin(hs: DevServer) -> None:
    token = await hs.admin_token()
    assert await hs.admin_token() == token
    status, body = await call(
        "GET", f"{hs.url}/_synapse/admin/v2/users/@mxsync-admin:localhost", token
    )
    assert status == 200 and body["admin"] is True


async def test_default_limits_throttle_messages_until_override(hs: DevServer) -> None:
    throttled = await hs.register("throttled")
    room = await create_room(hs.url, throttled.access_token)
    assert 429 in await send_burst(hs.url, throttled, room)

    free = await hs.register("free")
    await hs.override_ratelimit(free.user_id)
    room = await create_room(hs.url, free.access_token)
    assert await send_burst(hs.url, free, room) == [200] * 20


async def test_second_devserver_on_same_state_dir_fails_clearly(hs: DevServer) -> None:
    with pytest.raises(StateDirLocked, match="in use by another DevServer") as info:
        async with DevServer(hs.state_dir):
            pass
    assert str(os.getpid()) in str(info.value)
    # The running server is untouched.
    status, _ = await call("GET", f"{hs.url}/_matrix/client/versions")
    assert status == 200
    assert (hs.state_dir / "devserver.lock").exists()


async def test_state_persists_across_restart_and_stop_reaps_synapse(tmp_path: Path) -> None:
    async with DevServer(tmp_path) as first:
        carol = await first.register("carol")
        pid = first.pid
        assert pid is not None
    assert not pid_running(pid)
    assert not (tmp_path / "devserver.lock").exists()

    # The second run changes the rate limits and leaves by cancellation.
    second_pid: int | None = None
    with anyio.CancelScope() as scope:
        async with DevServer(tmp_path, rate_limits="relaxed") as second:
            second_pid = second.pid
            assert second_pid is not None
            status, body = await call(
                "POST",
                f"{second.url}/_matrix/client/v3/login",
                body={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "carol"},
                    "password": carol.password,
                },
            )
            assert status == 200, body
            assert body["user_id"] == carol.user_id
            again = await second.register("carol")
            assert again.user_id == carol.user_id
            room = await create_room(second.url, again.access_token)
            # relaxed lifts rc_message without any per-user override
            assert await send_burst(second.url, again, room) == [200] * 20
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert second_pid is not None and not pid_running(second_pid)


async def test_killed_parent_leaves_no_orphan_and_a_stale_lock(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, anyio
        from mxsync.dev import DevServer

        async def main():
            async with DevServer(sys.argv[1]) as hs:
                print(hs.pid, flush=True)
                await anyio.sleep_forever()

        anyio.run(main, backend="asyncio")
        """
    )
    parent = await anyio.open_process(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert parent.stdout is not None
        synapse_pid = int(await read_line(parent.stdout, 60))
        assert pid_running(synapse_pid)
    finally:
        parent.kill()  # SIGKILL: no cleanup code of the parent runs
        with anyio.fail_after(10):
            await parent.wait()
    await wait_pid_gone(synapse_pid, 10)

    stale = json.loads((tmp_path / "devserver.lock").read_text())
    assert stale["synapse_pid"] == synapse_pid
    async with DevServer(tmp_path) as hs:
        lock = json.loads((tmp_path / "devserver.lock").read_text())
        assert lock["pid"] == os.getpid() and lock["synapse_pid"] == hs.pid


async def test_cli_prints_url_and_stops_synapse_on_ctrl_c(tmp_path: Path) -> None:
    proc = await anyio.open_process(
        [sys.executable, "-m", "mxsync.cli.devserver", "--state-dir", str(tmp_path)],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the "Ctrl-C" below reaches its group only
    )
    try:
        assert proc.stdout is not None
        url = await read_line(proc.stdout, 60)
        assert url.startswith("http://127.0.0.1:")
        status, _ = await call("GET", f"{url}/_matrix/client/versions")
        assert status == 200
        synapse_pid = json.loads((tmp_path / "devserver.lock").read_text())["synapse_pid"]
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        with anyio.fail_after(15):
            assert await proc.wait() == 0
        assert not pid_running(synapse_pid)
    finally:
        if proc.returncode is None:
            proc.kill()
            with anyio.fail_after(10):
                await proc.wait()
