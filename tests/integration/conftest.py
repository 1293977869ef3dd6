"""Shared fixtures: one real Synapse per test session, users, and running clients.

The homeserver keeps Synapse's default message rate limits (0.2 events/s,
burst 10), the ones real servers run. Tests that need volume lift the limit
for their own users through the admin API (``relaxed=True``), exactly as an
operator would for a bridge or a bot.

``federation`` is a second, separate world for behaviour that crosses servers:
two Synapses that federate (the first on SQLite, the second on PostgreSQL),
each behind a proxy whose link a test cuts and heals. ``fed_user(i)``
registers a user on server *i*, ``fed_client(creds)`` starts a Client on that
user's server; ``fed_link`` is the federation for one test,
healed (and its backoff reset) when the test ends so the next starts joined up;
``Federation.heal_link(reset=...)`` heals with or without the admin reset.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from mxsync import Client
from mxsync.dev import Credentials, Database, DevServer, Federation

_counter = itertools.count()


@pytest.fixture(scope="session")
async def hs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServer]:
    state = tmp_path_factory.mktemp("synapse")
    async with DevServer(state, rate_limits="default") as server:
        yield server


UserFactory = Callable[..., Awaitable[Credentials]]


async def new_user(server: DevServer, prefix: str, *, relaxed: bool = False) -> Credentials:
    """A user of a fresh name on ``server``; ``relaxed`` lifts its message rate limit."""
    creds = await server.register(f"{prefix}{next(_counter)}x{uuid.uuid4().hex[:6]}")
    if relaxed:
        await server.override_ratelimit(creds.user_id)
    return creds


@pytest.fixture
def make_user(hs: DevServer) -> UserFactory:
    async def make(prefix: str = "u", *, relaxed: bool = False) -> Credentials:
        return await new_user(hs, prefix, relaxed=relaxed)

    return make


ClientFactory = Callable[..., Awaitable[Client]]


@contextlib.asynccontextmanager
async def _clients(tmp_path: Path, url_of: Callable[[Credentials], str]
                   ) -> AsyncIterator[ClientFactory]:
    """Start clients (on ``url_of(creds)``) that are stopped when the block ends.

    Each client lives in a task of the block's own task group, so that it is
    entered and exited in the same task (as anyio requires of task groups),
    whatever task the test body runs in.
    """

    async def host(client: Client, *, task_status: TaskStatus[Client]) -> None:
        async with client:
            task_status.started(client)
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:

        async def make(creds: Credentials, *, store: bool | Path = True, **kw: Any) -> Client:
            if store is True:
                local = creds.user_id[1:].split(":")[0]
                store_path: Path | None = tmp_path / f"{local}-{uuid.uuid4().hex[:6]}.db"
            elif store is False:
                store_path = None
            else:
                store_path = store
            client = Client(url_of(creds), creds.user_id, password=creds.password,
                            store_path=store_path, **kw)
            started: Client = await tg.start(host, client)
            return started

        yield make
        tg.cancel_scope.cancel()


@pytest.fixture
async def make_client(hs: DevServer, tmp_path: Path) -> AsyncIterator[ClientFactory]:
    """Start clients on ``hs`` that are stopped when the test ends."""
    async with _clients(tmp_path, lambda creds: hs.url) as make:
        yield make


# -- a federation -----------------------------------------------------------------

#: The databases of the federation's servers, in order.
FEDERATION_DATABASES: tuple[Database, ...] = ("sqlite", "postgres")


@pytest.fixture(scope="session")
async def federation() -> AsyncIterator[Federation]:
    # Not under pytest's tmp dir: that is mode 0700, and PostgreSQL runs as the
    # postgres user, who must reach its data directory.
    base = Path(tempfile.mkdtemp(prefix="mxsync-federation-"))
    os.chmod(base, 0o711)
    try:
        async with Federation(base, FEDERATION_DATABASES, rate_limits="default") as fed:
            yield fed
    finally:
        shutil.rmtree(base, ignore_errors=True)


FedUserFactory = Callable[..., Awaitable[Credentials]]


@pytest.fixture
def fed_user(federation: Federation) -> FedUserFactory:
    """``await fed_user(i, prefix, relaxed=False)``: a new user on server ``i``."""

    async def make(server: int, prefix: str = "f", *, relaxed: bool = False) -> Credentials:
        return await new_user(federation.servers[server], prefix, relaxed=relaxed)

    return make


@pytest.fixture
async def fed_client(federation: Federation, tmp_path: Path) -> AsyncIterator[ClientFactory]:
    """Like ``make_client``, each client on the server its user belongs to."""
    async with _clients(tmp_path, lambda creds: creds.homeserver) as make:
        yield make


@pytest.fixture
async def fed_link(federation: Federation) -> AsyncIterator[Federation]:
    """The federation for one test, healed and reset however the test ends.

    In the test, ``await fed_link.heal_link(reset=...)`` heals (with ``reset``,
    also dropping Synapse's backoff at once); ``fed_link.cut(mode)`` cuts.
    """
    try:
        yield federation
    finally:
        with contextlib.suppress(Exception):
            await federation.heal_link(reset=True)
