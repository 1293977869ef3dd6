"""The federation test infrastructure against real Synapses: rooms that span two
servers, a link that is cut and healed, and the second server on PostgreSQL.

Observed here (Synapse 1.163, two cores shared with other suites): with the
admin reset after a heal, events queued during the partition cross in well
under a second to a few seconds. Without it, a side that went into backoff
waits for Synapse's own retry, which only a *new* event towards that
destination (or its once-a-minute catch-up sweep) triggers: the test nudges
with fresh traffic, which is what real rooms do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
                              *, reset: bool) -> tuple[float, float]:
    tag = f"{mode}-{'reset' if reset else 'plain'}"
    fed.cut(mode)  # type: ignore[arg-type]
    # Each side still serves its own clients while the link is down.
    with anyio.fail_after(30):
        await shared.alice.say(shared.room_id, f"A during {tag}")
        await shared.bob.say(shared.room_id, f"B during {tag}")
    await anyio.sleep(2)
    assert f"A during {tag}" in await shared.alice.bodies(shared.room_id)
    assert f"A during {tag}" not in await shared.bob.bodies(shared.room_id)
    assert f"B during {tag}" not in await shared.alice.bodies(shared.room_id)
    await fed.heal_link(reset=reset)
    nudge_b = None if reset else shared.bob
    nudge_a = None if reset else shared.alice
    to_b = await wait_seen(shared.bob, shared.room_id, {f"A during {tag}"}, nudge=nudge_a)
    to_a = await wait_seen(shared.alice, shared.room_id, {f"B during {tag}"}, nudge=nudge_b)
    print(f"heal after {tag}: A->B {to_b:.1f} s, B->A {to_a:.1f} s")
    return to_b, to_a


async def test_drop_cut_then_heal_with_reset(fed_link: Federation, shared: SharedRoom) -> None:
    await _partition_and_heal(fed_link, shared, "drop", reset=True)


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


def _our_children(state_dir: Path) -> list[str]:
    """Command lines of running processes that mention ``state_dir``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(state_dir) in cmd:
            found.append(cmd)
    return found


async def test_stopping_leaves_no_postgres_or_synapse() -> None:
    base = Path(tempfile.mkdtemp(prefix="mxsync-pgstop-"))
    os.chmod(base, 0o711)
    try:
        hs = DevServer(base / "hs", database="postgres", federation=True,
                       server_name="127.0.0.1:1", startup_timeout=120)
        async with hs:
            assert hs.postgres is not None
            pids = [hs.pid, hs.postgres.pid]
            assert all(pids) and len(_our_children(base)) >= 2
        assert not any(pid_alive(pid) for pid in pids if pid is not None)
        assert _our_children(base) == []
        assert hs.postgres is None
    finally:
        shutil.rmtree(base, ignore_errors=True)
