"""The federation test infrastructure against real Synapses: rooms that span two
servers, a link that is cut and healed, and the second server on PostgreSQL.

Observed here (Synapse 1.163, the fast retries of ``mxsync.dev.config``, two
cores shared with other suites), from heal until the other side's /messages
shows an event sent during the partition:

- with the admin reset (``heal_link(reset=True)``): 0.0-0.3 s after a "drop" or
  a "reject" cut of 3-20 s. There is only a backoff to reset once Synapse has
  given up retrying within the request (max_long_retries: ~4 s of "reject",
  longer than a "drop" of 45 s, whose held connections simply resume);
- without it, "drop" (held connections resume): 0.3-0.4 s even after 45 s;
- without it, "reject" of 3 s: 1-2 s (Synapse's own short retry);
- without it, "reject" of 20 s: 42 s, with no new traffic. The destination is
  in backoff and nothing wakes it but a new event towards it or Synapse's
  once-a-minute catch-up sweep; one new message per side right after the heal
  brought it down to 0.4-0.6 s. So ``wait_seen`` nudges with fresh traffic
  when there is no reset, as real rooms do.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from mxsync.dev import Credentials, DevServer, Federation
from mxsync.dev.config import read_yaml
from mxsync.dev.process import pid_alive
from mxsync.protocol import api

pytestmark = pytest.mark.anyio

CROSS_DEADLINE = 90.0
REPO = Path(__file__).resolve().parents[2]


@dataclass
class User:
    """Just enough of a Matrix client to prove the servers federate."""

    creds: Credentials
    session: aiohttp.ClientSession

    async def call(self, req: api.Request) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.creds.access_token}"}
        async with self.session.request(
            req.method, self.creds.homeserver + req.path, params=req.query, json=req.body,
            headers=headers, timeout=aiohttp.ClientTimeout(total=60),
        ) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                raise AssertionError(f"{req.what}: HTTP {resp.status} {data}")
            return data

    async def say(self, room_id: str, body: str) -> str:
        content = {"msgtype": "m.text", "body": body}
        event = await self.call(api.send_event(room_id, "m.room.message", uuid.uuid4().hex,
                                               content))
        return str(event["event_id"])

    async def bodies(self, room_id: str) -> set[str]:
        page = await self.call(api.room_messages(room_id, None, "b", limit=100))
        return {str(e["content"].get("body")) for e in page.get("chunk", [])
                if e.get("type") == "m.room.message"}


async def _user(fed: Federation, server: int, session: aiohttp.ClientSession) -> User:
    creds = await fed.servers[server].register(f"infra{server}x{uuid.uuid4().hex[:6]}")
    return User(creds, session)


async def wait_seen(user: User, room_id: str, bodies: set[str], *,
                    nudge: User | None = None, nudge_every: float = 5.0) -> float:
    """Seconds until ``user`` sees every one of ``bodies``; ``nudge`` sends fresh traffic."""
    start = last_nudge = time.monotonic()
    with anyio.fail_after(CROSS_DEADLINE):
        while not bodies <= await user.bodies(room_id):
            if nudge is not None and time.monotonic() - last_nudge > nudge_every:
                await nudge.say(room_id, f"nudge {uuid.uuid4().hex[:6]}")
                last_nudge = time.monotonic()
            await anyio.sleep(0.25)
    return time.monotonic() - start


@dataclass
class SharedRoom:
    alice: User  # on server 0
    bob: User  # on server 1
    room_id: str


@pytest.fixture(scope="module")
async def shared(federation: Federation) -> AsyncIterator[SharedRoom]:
    async with aiohttp.ClientSession() as session:
        alice = await _user(federation, 0, session)
        bob = await _user(federation, 1, session)
        room = await alice.call(api.create_room({"preset": "private_chat",
                                                 "invite": [bob.creds.user_id]}))
        room_id = str(room["room_id"])
        with anyio.fail_after(CROSS_DEADLINE):
            await bob.call(api.join(room_id))
        yield SharedRoom(alice, bob, room_id)


async def test_servers_federate_under_ip_literal_names(federation: Federation) -> None:
    names = federation.server_names
    assert len(names) == 2 and len(set(names)) == 2
    for name, proxy, hs in zip(names, federation.proxies, federation.servers, strict=True):
        assert name == f"127.0.0.1:{proxy.port}"
        assert hs.federation_port not in (None, proxy.port)


async def test_messages_flow_both_ways(federation: Federation, shared: SharedRoom) -> None:
    await shared.alice.say(shared.room_id, "hello from A")
    await shared.bob.say(shared.room_id, "hello from B")
    await wait_seen(shared.bob, shared.room_id, {"hello from A"})
    await wait_seen(shared.alice, shared.room_id, {"hello from B"})
    # Through the proxies, not around them.
    assert all(proxy.accepted > 0 for proxy in federation.proxies)


async def _partition_and_heal(fed: Federation, shared: SharedRoom, mode: str,
                              *, reset: bool, hold: float = 2.0) -> int:
    tag = f"{mode}-{'reset' if reset else 'plain'}"
    fed.cut(mode)  # type: ignore[arg-type]
    # Each side still serves its own clients while the link is down.
    with anyio.fail_after(30):
        await shared.alice.say(shared.room_id, f"A during {tag}")
        await shared.bob.say(shared.room_id, f"B during {tag}")
    await anyio.sleep(hold)
    assert f"A during {tag}" in await shared.alice.bodies(shared.room_id)
    assert f"A during {tag}" not in await shared.bob.bodies(shared.room_id)
    assert f"B during {tag}" not in await shared.alice.bodies(shared.room_id)
    resets = await fed.heal_link(reset=reset)
    nudge_b = None if reset else shared.bob
    nudge_a = None if reset else shared.alice
    to_b = await wait_seen(shared.bob, shared.room_id, {f"A during {tag}"}, nudge=nudge_a)
    to_a = await wait_seen(shared.alice, shared.room_id, {f"B during {tag}"}, nudge=nudge_b)
    print(f"heal after {tag}: A->B {to_b:.1f} s, B->A {to_a:.1f} s, {resets} resets")
    return resets


async def test_drop_cut_then_heal_with_reset(fed_link: Federation, shared: SharedRoom) -> None:
    await _partition_and_heal(fed_link, shared, "drop", reset=True)


async def test_reject_cut_puts_peers_in_backoff_that_the_admin_reset_clears(
    fed_link: Federation, shared: SharedRoom
) -> None:
    # Refused connections fail fast, but Synapse first retries within the request
    # (max_long_retries, ~4 s here) before it records a backoff to reset.
    assert await _partition_and_heal(fed_link, shared, "reject", reset=True, hold=7) >= 1


async def test_reject_cut_then_heal_without_reset(fed_link: Federation,
                                                  shared: SharedRoom) -> None:
    await _partition_and_heal(fed_link, shared, "reject", reset=False)


async def test_second_server_is_on_postgresql(federation: Federation) -> None:
    hs = federation.servers[1]
    assert hs.database == "postgres" and hs.postgres is not None
    overlay = read_yaml(hs.state_dir / "devserver.yaml")
    assert overlay["database"]["name"] == "psycopg2"
    assert overlay["database"]["args"]["host"] == str(hs.postgres.socket_dir)
    # Synapse's own tables, seen through the cluster's socket; users registered above.
    out = subprocess.run(
        hs.postgres.psql_argv("-tAc", "SELECT count(*) FROM users"),
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert int(out.stdout) >= 1
    encoding = subprocess.run(
        hs.postgres.psql_argv("-tAc", "SELECT pg_encoding_to_char(encoding), datcollate "
                              "FROM pg_database WHERE datname = current_database()"),
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert encoding.stdout.strip() == "UTF8|C"
    assert federation.servers[0].database == "sqlite"


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every running process."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(proc.name), ppid, cmd))
    return found


def _our_children(state_dir: Path) -> list[str]:
    """Command lines of running processes that mention ``state_dir``."""
    return [cmd for _, _, cmd in _processes() if str(state_dir) in cmd]


def _children_of(pid: int) -> list[int]:
    return [child for child, ppid, _ in _processes() if ppid == pid]


async def test_stopping_leaves_no_postgres_or_synapse() -> None:
    base = Path(tempfile.mkdtemp(prefix="mxsync-pgstop-"))
    os.chmod(base, 0o711)
    try:
        hs = DevServer(base / "hs", database="postgres", federation=True,
                       server_name="127.0.0.1:1", startup_timeout=120)
        async with hs:
            assert hs.postgres is not None and hs.postgres.pid is not None
            # The postmaster's helpers retitle themselves ("postgres: checkpointer").
            pids = [hs.pid, hs.postgres.pid, *_children_of(hs.postgres.pid)]
            assert all(pids) and len(pids) > 3 and len(_our_children(base)) >= 2
        assert not any(pid_alive(pid) for pid in pids if pid is not None)
        assert _our_children(base) == []
        assert hs.postgres is None
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def _read_lines(stream: Any, n: int, seconds: float) -> list[str]:
    buf = b""
    with anyio.fail_after(seconds):
        while buf.count(b"\n") < n:
            buf += await stream.receive()
    return buf.decode().splitlines()[:n]


async def _cli_federation(state_dir: Path) -> list[str]:
    """Run ``mxsync devserver --federation 2``; its lines, checked, then Ctrl-C."""
    proc = await anyio.open_process(
        [sys.executable, "-m", "mxsync.cli.devserver", "--federation", "2",
         "--state-dir", str(state_dir)],
        cwd=REPO, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines = await _read_lines(proc.stdout, 2, 120)
        async with aiohttp.ClientSession() as session:
            for line in lines:
                url, name = line.split(" ")
                async with session.get(f"{url}/_matrix/client/versions") as resp:
                    assert resp.status == 200
                # The name leads to the proxy, and through it to the TLS listener.
                async with session.get(f"https://{name}/_matrix/federation/v1/version",
                                       ssl=False) as resp:
                    assert resp.status == 200
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        with anyio.fail_after(30):
            assert await proc.wait() == 0
        assert _our_children(state_dir) == []
        return lines
    finally:
        if proc.returncode is None:
            proc.kill()
            with anyio.fail_after(10):
                await proc.wait()


async def test_cli_federation_prints_urls_and_names_and_keeps_them(tmp_path: Path) -> None:
    first = await _cli_federation(tmp_path)
    names = [line.split(" ")[1] for line in first]
    assert all(name.startswith("127.0.0.1:") for name in names) and len(set(names)) == 2
    # A state dir keeps its server name: a second run listens on the same proxy ports.
    again = await _cli_federation(tmp_path)
    assert [line.split(" ")[1] for line in again] == names


async def test_mxsync_clients_on_both_servers_share_a_room(
    fed_user: Any, fed_client: Any
) -> None:
    """The fixtures the cross-server feature tests build on: a Client per server."""
    alice = await fed_client(await fed_user(0, "ca"))
    bob = await fed_client(await fed_user(1, "cb"))
    room = await alice.create_room(invite=[bob.user_id], writers=[alice.user_id, bob.user_id])
    with anyio.fail_after(CROSS_DEADLINE):
        await bob.join(room)
    async with bob.room_events(room, ["org.mxsync.test"]) as recv:
        handle = await alice.send(room, "org.mxsync.test", {"n": 1})
        await handle.wait()
        with anyio.fail_after(CROSS_DEADLINE):
            event = await recv.receive()
    assert event.sender == alice.user_id and event.content == {"n": 1}
