"""Several DevServers on loopback that federate with each other, each behind a proxy.

:class:`Federation` owns N :class:`~mxsync.dev.DevServer` children (each in its
own state directory ``BASE/N``) and one :class:`~mxsync.dev.proxy.TcpProxy` in
front of each one's TLS federation listener.

Invariants:

- A server's name is ``127.0.0.1:P`` where P is its *proxy's* port: peers find
  each other through the name alone (an IP literal with a port needs no DNS,
  no SRV and no .well-known), so everything federating passes a proxy and
  cutting the proxies cuts the link, while each server's client API (not
  proxied) keeps serving its own clients.
- A proxy binds before its server starts and holds the port until the end.
  A state directory keeps its server name across runs (a homeserver cannot be
  renamed), so a later run binds the same proxy port again.
- Cutting proxy *i* stops what every peer sends to server *i*; :meth:`cut`
  cuts them all, a full partition.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from ..errors import ConfigError, DevServerError
from .config import BASE_CONFIG, RateLimitMode, read_yaml
from .proxy import CutMode, TcpProxy
from .server import Database, DevServer

__all__ = ["Federation"]

log = logging.getLogger("mxsync.devserver")


def _previous_proxy_port(state_dir: Path) -> int:
    """The proxy port of an earlier run's server name, 0 (any) for a new state dir."""
    path = state_dir / BASE_CONFIG
    if not path.exists():
        return 0
    name = str(read_yaml(path).get("server_name", ""))
    host, _, port = name.rpartition(":")
    if host != "127.0.0.1" or not port.isdigit():
        raise ConfigError(
            f"state dir {state_dir} belongs to server_name {name!r}, which cannot federate "
            "here (it must be 127.0.0.1:PORT); use another state dir"
        )
    return int(port)


class Federation(anyio.AsyncContextManagerMixin):
    """``n`` federating Synapses, started and stopped as an async context manager.

    ::

        async with Federation(tmp_path, databases=["sqlite", "postgres"]) as fed:
            a, b = fed.servers
            fed.cut("drop")   # a full partition; both keep serving their clients
            fed.heal()
            await fed.reset_connections()   # optional: skip Synapse's backoff

    ``databases`` has one entry per server (its length is ``n``).
    """

    def __init__(
        self,
        base_dir: str | Path,
        databases: Sequence[Database] = ("sqlite", "sqlite"),
        *,
        rate_limits: RateLimitMode = "default",
        startup_timeout: float = 120.0,
        **server_options: Any,
    ) -> None:
        if len(databases) < 1:
            raise ConfigError("a federation needs at least one server")
        self.base_dir = Path(base_dir).expanduser().resolve()
        self._databases = list(databases)
        self._rate_limits: RateLimitMode = rate_limits
        self._startup_timeout = startup_timeout
        self._server_options = server_options
        self.proxies: list[TcpProxy] = []
        self.servers: list[DevServer] = []

    def __len__(self) -> int:
        return len(self._databases)

    @property
    def server_names(self) -> list[str]:
        return [hs.server_name for hs in self.servers]

    # ------------------------------------------------------------------ the link

    def cut(self, mode: CutMode = "drop") -> None:
        """Partition every server from every other (see :class:`TcpProxy`)."""
        for proxy in self.proxies:
            proxy.cut(mode)

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.heal()

    async def heal_link(self, *, reset: bool = True) -> int:
        """:meth:`heal`; with ``reset``, also :meth:`reset_connections` (its count)."""
        self.heal()
        return await self.reset_connections() if reset else 0

    async def reset_connections(self) -> int:
        """Ask every server to drop its backoff towards every peer; return how many did."""
        done = 0
        for hs in self.servers:
            for peer in self.servers:
                if peer is not hs and await hs.reset_connection(peer.server_name):
                    done += 1
        return done

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Federation]:
        async with contextlib.AsyncExitStack() as stack:
            await self._start(stack)
            yield self

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        self.proxies, self.servers = [], []
        for i, database in enumerate(self._databases):
            state_dir = self.base_dir / str(i)
            state_dir.mkdir(parents=True, exist_ok=True)
            port = _previous_proxy_port(state_dir)
            try:
                proxy = await stack.enter_async_context(TcpProxy(port=port))
            except OSError as exc:
                raise DevServerError(
                    f"cannot listen on 127.0.0.1:{port}, the federation port of "
                    f"{state_dir}'s server name: {exc}"
                ) from exc
            self.proxies.append(proxy)
            self.servers.append(
                DevServer(
                    state_dir,
                    server_name=f"127.0.0.1:{proxy.port}",
                    federation=True,
                    database=database,
                    rate_limits=self._rate_limits,
                    startup_timeout=self._startup_timeout,
                    **self._server_options,
                )
            )
        for hs in self.servers:
            # Stopped in reverse order; every stop is safe on a server that never started.
            stack.push_async_callback(hs.stop)
        # Concurrently: Synapse spends most of its start-up waiting on itself.
        async with anyio.create_task_group() as tg:
            for hs in self.servers:
                tg.start_soon(hs.start)
        for hs, proxy in zip(self.servers, self.proxies, strict=True):
            assert hs.federation_port is not None
            proxy.set_target("127.0.0.1", hs.federation_port)
        log.info("federation of %s ready", ", ".join(self.server_names))
