"""The fleet gateway: many devices, each its own Matrix user, from one appservice process.

Owns the application service's side: its registration (:class:`Registration`,
the YAML file a homeserver lists in ``app_service_config_files``), the device
users of its namespace (``@dev_*:server``) and :class:`FleetGateway`, which
registers them, lets them into a room and opens a Publisher for each, all on
**one** client: the appservice's sender, with one store, one outbox and one
sync loop.

How one client speaks for many users: :class:`DeviceEngine` is the engine
surface (``engine.surface.Engine``) of one device user over the shared
connection. Every outbox entry it makes carries ``as_user`` (sent with
``?user_id=``) and, for a batch of readings, ``ts_ms`` = the batch's first
reading time (``?ts=``: the event carries the time it was measured). The rest
(receiving, history, state, the store) is the connection's. So every
guarantee of a single device holds per device: readings persisted before they
count, each batch sent once under a fixed transaction id, ``seq`` order per
device lane, birth and an MSC4140 last will per device (the will is the
device user's, so the gateway's death turns its devices offline).

Receiving: Synapse serves no /sync to appservice users. Entered (``async
with``), the gateway starts :class:`~mxsync.fleet.transactions.TransactionEndpoint`
at the registration's ``url``: the homeserver pushes the rooms' events there,
and they reach the connection's consumers (``Connection.push_events``), the
devices' command inboxes among them.

Invariants:
- Registration is idempotent: a device user that exists (``M_USER_IN_USE``)
  is taken as it is; joining a room it is in is a no-op.
- With ``rate_limited: false`` in the registration the homeserver does not
  rate-limit the device users; the registration this module writes says so.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from ..engine.outbox import OutboxEntry, OutgoingEvent, SendHandle, Staging
from ..errors import ConfigError, MatrixError
from ..protocol import api
from ..protocol.types import POWER_LEVELS, READINGS
from ..streams import Publisher
from .transactions import TransactionEndpoint, listen_address

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["Registration", "DeviceEngine", "FleetGateway", "device_localpart"]

log = logging.getLogger("mxsync.fleet.appservice")

T = TypeVar("T")

_LOCALPART_BAD = re.compile(r"[^a-z0-9._=/-]")


def device_localpart(prefix: str, device: str) -> str:
    """The localpart of a device's user: ``dev_`` + the device id, lowercased,
    characters a user id cannot have as ``=`` (``boiler-1`` -> ``dev_boiler-1``)."""
    return prefix + _LOCALPART_BAD.sub("=", device.lower())


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """An application service registration (the file the homeserver reads)."""

    id: str
    as_token: str
    hs_token: str
    sender_localpart: str
    #: Localparts of the device users start with this.
    user_prefix: str = "dev_"
    server_name: str
    #: Where the homeserver pushes transactions (the gateway's
    #: ``fleet.transactions`` endpoint); None: nothing is pushed, and the devices
    #: take no live commands (Synapse serves no /sync to appservice users).
    url: str | None = None
    rate_limited: bool = False

    @classmethod
    def generate(cls, server_name: str, *, id: str = "mxsync-fleet",
                 sender_localpart: str = "fleet", user_prefix: str = "dev_",
                 url: str | None = None) -> Registration:
        """New tokens; ``url``: the gateway's transaction endpoint as the
        homeserver reaches it (``http://127.0.0.1:29740``), None for none."""
        if not re.fullmatch(r"[a-z0-9._=/-]+", sender_localpart + user_prefix):
            raise ConfigError("sender_localpart and user_prefix must be lowercase localparts")
        if url is not None:
            listen_address(url)  # raises ConfigError for a url one cannot listen at
            url = url.rstrip("/")
        return cls(id=id, as_token=secrets.token_urlsafe(32), hs_token=secrets.token_urlsafe(32),
                   sender_localpart=sender_localpart, user_prefix=user_prefix,
                   server_name=server_name, url=url)

    @property
    def sender(self) -> str:
        return f"@{self.sender_localpart}:{self.server_name}"

    def user_id(self, device: str) -> str:
        return f"@{device_localpart(self.user_prefix, device)}:{self.server_name}"

    def homeserver_yaml(self) -> dict[str, Any]:
        """The registration as the homeserver wants it (YAML; JSON is YAML too)."""
        return {
            "id": self.id,
            "url": self.url,
            "as_token": self.as_token,
            "hs_token": self.hs_token,
            "sender_localpart": self.sender_localpart,
            "rate_limited": self.rate_limited,
            "namespaces": {
                "users": [{"exclusive": True,
                           "regex": f"@{re.escape(self.user_prefix)}.*:"
                                    f"{re.escape(self.server_name)}"}],
                "aliases": [], "rooms": [],
            },
            # Read back by Registration.load; the homeserver ignores unknown keys.
            "de.mxsync": {"user_prefix": self.user_prefix, "server_name": self.server_name},
        }

    def write(self, path: Path) -> Path:
        """Write the registration file (mode 0600: it holds the tokens)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(json.dumps(self.homeserver_yaml(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Registration:
        try:
            data = json.loads(Path(path).read_text())
            extra = data.get("de.mxsync", {})
            return cls(id=data["id"], as_token=data["as_token"], hs_token=data["hs_token"],
                       sender_localpart=data["sender_localpart"],
                       user_prefix=extra["user_prefix"], server_name=extra["server_name"],
                       rate_limited=bool(data.get("rate_limited", True)),
                       url=data.get("url") if isinstance(data.get("url"), str) else None)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a registration written by mxsync: {exc}") from None


class DeviceEngine:
    """The engine surface of one device user over the gateway's connection."""

    def __init__(self, conn: Client, user_id: str) -> None:
        self._conn = conn
        self._user = user_id

    @property
    def user_id(self) -> str:
        return self._user

    @property
    def device_id(self) -> str | None:
        return self._conn.device_id

    def __getattr__(self, name: str) -> Any:
        # Receiving, history, state and the store are the connection's.
        return getattr(self._conn, name)

    def new_entry(self, room_id: str, event_type: str, content: dict[str, Any] | bytes, *,
                  state_key: str | None = None, lane: str = "default") -> OutboxEntry:
        entry = OutboxEntry.new(room_id, event_type, content, state_key=state_key, lane=lane)
        ts = None
        if event_type == READINGS and state_key is None:
            raw = content if isinstance(content, dict) else msgspec.json.decode(content)
            t0 = raw.get("t0_ms") if isinstance(raw, dict) else None
            ts = t0 if type(t0) is int else None
        return msgspec.structs.replace(entry, as_user=self._user, ts_ms=ts)

    async def stage(self, fn: Callable[[Staging], T]) -> tuple[T, list[SendHandle]]:
        return await self._conn.stage(fn)

    async def send(self, room_id: str, event_type: str, content: dict[str, Any], *,
                   state_key: str | None = None, lane: str = "default") -> SendHandle:
        entry = self.new_entry(room_id, event_type, content, state_key=state_key, lane=lane)
        _, handles = await self._conn.stage(lambda s: s.add(entry))
        return handles[0]

    async def send_many(self, events: Iterable[OutgoingEvent]) -> list[SendHandle]:
        entries = [self.new_entry(e.room_id, e.event_type, e.content, state_key=e.state_key,
                                  lane=e.lane) for e in events]
        _, handles = await self._conn.stage(lambda s: [s.add(e) for e in entries])
        return handles

    async def request(self, req: api.Request) -> dict[str, Any]:
        return await self._conn.request(api.as_appservice(req, self._user))


class FleetGateway:
    """Devices of one room, each as its own user of the appservice, on one client.

    ``client`` is a Client logged in as the registration's sender (its
    ``access_token`` is the as_token; ``sync=False``: Synapse refuses /sync to
    appservices, their events are pushed). ``await gateway.add_devices(ids)``
    registers the users, lets them into the room (invite, level 50, join) in a
    few requests; ``gateway.publisher(device, **kw)`` is that device's Publisher.

    ``async with gateway`` also takes the homeserver's pushed transactions
    (:mod:`mxsync.fleet.transactions`) when the registration has a ``url``:
    listening on ``listen_host`` (127.0.0.1) and ``listen_port`` (the url's),
    events go to the client's consumers, so the devices take commands.
    """

    def __init__(self, client: Client, registration: Registration, room_id: str, *,
                 listen_host: str | None = None, listen_port: int | None = None) -> None:
        self._client = client
        self._reg = registration
        self._room = room_id
        self._listen = (listen_host, listen_port)
        self._users: set[str] = set()
        #: The transaction endpoint, while ``async with`` runs and the registration has a url.
        self.endpoint: TransactionEndpoint | None = None

    @property
    def room_id(self) -> str:
        return self._room

    def engine(self, device: str) -> DeviceEngine:
        return DeviceEngine(self._client, self._reg.user_id(device))

    def publisher(self, device: str, **kw: Any) -> Publisher:
        """The device's Publisher. It takes commands (``commands=True``) while the
        gateway takes the homeserver's transactions (``async with gateway`` and a
        registration with a ``url``); otherwise not by default, as no event would
        reach it live (Synapse serves no /sync to appservice users)."""
        kw.setdefault("commands", self.endpoint is not None)
        return Publisher(self.engine(device), self._room, device, **kw)  # type: ignore[arg-type]

    async def add_devices(self, devices: Iterable[str], *, level: int = 50) -> list[str]:
        """Register, invite, empower and join the users of ``devices``; their user ids."""
        users = [self._reg.user_id(d) for d in devices]
        limiter = anyio.CapacityLimiter(8)

        async def each(fn: Callable[[str], Awaitable[None]]) -> None:
            async def one(user: str) -> None:
                async with limiter:
                    await fn(user)

            async with anyio.create_task_group() as tg:
                for user in users:
                    tg.start_soon(one, user)

        async def register(user: str) -> None:
            try:
                await self._client.request(
                    api.register_appservice_user(user[1:].split(":", 1)[0]))
            except MatrixError as exc:
                if exc.errcode != "M_USER_IN_USE":
                    raise

        await each(register)
        # Fresh, not the state cache: another add_devices (an MQTT device's birth
        # in the bridge) may have changed the levels a moment ago.
        pl = dict(await self._client.request(api.get_state(self._room, POWER_LEVELS)))
        levels = dict(pl.get("users", {}))
        if any(levels.get(u) != level for u in users):
            levels.update({u: level for u in users})
            pl["users"] = levels
            await self._client.request(api.put_state(self._room, POWER_LEVELS, "", pl))

        async def let_in(user: str) -> None:
            try:
                await self._client.request(api.invite(self._room, user))
            except MatrixError as exc:
                if exc.errcode != "M_FORBIDDEN":  # already in the room
                    raise
            await self._client.request(api.as_appservice(api.join(self._room), user))

        await each(let_in)
        self._users.update(users)
        return users

    async def _is_user(self, user_id: str) -> bool:
        """The homeserver's user query: a device user this gateway added (registered
        again if the homeserver lost it); any other user is unknown."""
        if user_id not in self._users:
            return False
        try:
            await self._client.request(api.register_appservice_user(user_id[1:].split(":")[0]))
        except MatrixError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise
        return True

    async def __aenter__(self) -> FleetGateway:
        if self._reg.url is None:
            return self
        host, port = listen_address(self._reg.url, *self._listen)
        endpoint = TransactionEndpoint(self._client, self._reg.id, self._reg.hs_token,
                                       host=host, port=port, users=self._is_user)
        await endpoint.__aenter__()
        self.endpoint = endpoint
        # Synapse retries at once what it kept while the gateway was away.
        await endpoint.ping()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            await endpoint.__aexit__(exc_type, exc, tb)
