"""The fleet gateway: many devices, each its own Matrix user, from one appservice process.

Owns the application service's side: its registration (:class:`Registration`,
the YAML file a homeserver lists in ``app_service_config_files``), the device
users of its namespace (``@dev_*:server``) and :class:`FleetGateway`, which
registers them, lets them into the fleet's rooms (:mod:`mxsync.fleet.rooms`:
rooms of at most ``room_size`` devices per group, made and found again by the
gateway; or one room the caller gives) and opens a Publisher for each, all on
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
- No device is put into an end-to-end encrypted room: the gateway cannot
  decrypt (an appservice user has no Olm device that receives room keys), so
  commands sent there would silently never arrive. A caller's room with
  ``m.room.encryption`` is a ConfigError (entering the gateway, adding
  devices); the gateway's own rooms are never encrypted
  (:mod:`mxsync.fleet.rooms`); encryption an operator turns on later is logged
  at error level, and the encrypted events that then arrive are counted and
  reported once per room (:mod:`mxsync.fleet.transactions`).
- With ``rate_limited: false`` in the registration the homeserver does not
  rate-limit the device users; the registration this module writes says so.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from ..engine.outbox import OutboxEntry, OutgoingEvent, SendHandle, Staging
from ..errors import ConfigError, MatrixError, MxsyncError
from ..protocol import api
from ..protocol.types import POWER_LEVELS, READINGS
from ..streams import Publisher
from .rooms import DEFAULT_GROUP, E2EE_LIMIT, FleetRooms, Shard, room_encrypted, validate_group
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


def _encrypted_room(room: str) -> ConfigError:
    return ConfigError(f"room {room} is end-to-end encrypted (m.room.encryption); {E2EE_LIMIT}")


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

    @property
    def alias_prefix(self) -> str:
        """Localparts of the fleet rooms' aliases start with this (``fleet_``)."""
        return f"{self.sender_localpart}_"

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
                # The rooms the gateway makes are found again by these aliases
                # (mxsync.fleet.rooms); an appservice may only create aliases of
                # its namespace.
                "aliases": [{"exclusive": True,
                             "regex": f"#{re.escape(self.alias_prefix)}.*:"
                                      f"{re.escape(self.server_name)}"}],
                "rooms": [],
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

    async def stage(self, fn: Callable[[Staging], T], *, hold: anyio.Event | None = None
                    ) -> tuple[T, list[SendHandle]]:
        return await self._conn.stage(fn, hold=hold)

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
    """Many devices, each as its own user of the appservice, on one client.

    ``client`` is a Client logged in as the registration's sender (its
    ``access_token`` is the as_token; ``sync=False``: Synapse refuses /sync to
    appservices, their events are pushed).

    - ``FleetGateway(client, reg)``: the gateway makes the fleet's rooms
      (:mod:`mxsync.fleet.rooms`): ``await gateway.add_devices(ids, group="site-a")``
      registers the users and puts them into the rooms of their group, at most
      ``room_size`` (50) devices per room, creating rooms as needed, with
      ``operators`` (user id -> power level, or user ids for 100) invited to
      each. A dashboard joins them (``gateway.rooms``, or by alias
      ``#<sender_localpart>_<group>.<k>:server``) and subscribes to each; one
      client runs any number of subscribers on its one sync loop.
    - ``FleetGateway(client, reg, room_id)``: every device in that one room,
      which the caller made and in which the sender may set power levels.

    ``gateway.publisher(device, **kw)`` is that device's Publisher, in its room.

    ``async with gateway`` also takes the homeserver's pushed transactions
    (:mod:`mxsync.fleet.transactions`) when the registration has a ``url``:
    listening on ``listen_host`` (127.0.0.1) and ``listen_port`` (the url's),
    events go to the client's consumers, so the devices take commands.

    Never in an end-to-end encrypted room (the gateway cannot decrypt): a
    caller's room with ``m.room.encryption`` raises ConfigError on ``async with``
    and in :meth:`add_devices`; rooms an operator encrypts later take no new
    devices and are listed in :attr:`encrypted_rooms`.
    """

    def __init__(self, client: Client, registration: Registration, room_id: str | None = None,
                 *, room_size: int = 50, operators: Mapping[str, int] | Iterable[str] = (),
                 concurrency: int = 16, listen_host: str | None = None,
                 listen_port: int | None = None) -> None:
        if type(room_size) is not int or not 1 <= room_size <= 10_000:
            raise ConfigError(f"room_size must be an int within 1..10000, got {room_size!r}")
        if type(concurrency) is not int or not 1 <= concurrency <= 256:
            raise ConfigError(f"concurrency must be an int within 1..256, got {concurrency!r}")
        if room_id is not None and (not isinstance(room_id, str) or not room_id.startswith("!")):
            raise ConfigError(f"not a room id: {room_id!r}")
        ops = dict(operators) if isinstance(operators, Mapping) else \
            dict.fromkeys(operators, 100)
        for user, lvl in ops.items():
            if not isinstance(user, str) or not user.startswith("@") or type(lvl) is not int:
                raise ConfigError(f"operators maps user ids to int levels, got {user!r}: {lvl!r}")
        self._client = client
        self._reg = registration
        self._room = room_id
        self._concurrency = concurrency
        self._fleet = FleetRooms(client, server_name=registration.server_name,
                                 alias_prefix=registration.alias_prefix,
                                 user_prefix=registration.user_prefix,
                                 room_size=room_size, operators=ops)
        #: Device user -> its room.
        self._room_of: dict[str, str] = {}
        self._listen = (listen_host, listen_port)
        #: Device users added (the endpoint's user query answers for them).
        self._users: set[str] = set()
        #: The transaction endpoint, while ``async with`` runs and the registration has a url.
        self.endpoint: TransactionEndpoint | None = None

    @property
    def room_id(self) -> str | None:
        """The one room given by the caller, or None when the gateway makes the rooms."""
        return self._room

    @property
    def rooms(self) -> list[str]:
        """Every room of the fleet this gateway knows (added devices' rooms)."""
        if self._room is not None:
            return [self._room]
        return [s.room_id for shards in self._fleet.groups.values() for s in shards]

    def groups(self) -> dict[str, list[str]]:
        """Group -> its rooms, in shard order (empty with one caller-given room)."""
        return {g: [s.room_id for s in shards] for g, shards in self._fleet.groups.items()}

    def room_of(self, device: str) -> str:
        """The room of an added device (with one given room: that room)."""
        if self._room is not None:
            return self._room
        room = self._room_of.get(self._reg.user_id(device))
        if room is None:
            raise ConfigError(f"device {device!r} was not added: await add_devices first")
        return room

    def engine(self, device: str) -> DeviceEngine:
        return DeviceEngine(self._client, self._reg.user_id(device))

    def publisher(self, device: str, **kw: Any) -> Publisher:
        """The device's Publisher in its room. It takes commands (``commands=True``)
        while the gateway takes the homeserver's transactions (``async with
        gateway`` and a registration with a ``url``); otherwise not by default, as
        no event would reach it live (Synapse serves no /sync to appservice users).
        ``offline_after`` defaults to 120 s (not 30): a thousand devices restart
        their wills every ``offline_after / 3``, 25 restarts/s."""
        kw.setdefault("commands", self.endpoint is not None)
        kw.setdefault("offline_after", 120.0)
        return Publisher(self.engine(device), self.room_of(device), device,  # type: ignore[arg-type]
                         **kw)

    @asynccontextmanager
    async def publishers(self, devices: Iterable[str], **kw: Any
                         ) -> AsyncIterator[dict[str, Publisher]]:
        """``async with gateway.publishers(ids, **kw) as pubs``: the devices'
        Publishers (device -> Publisher), opened and closed concurrently.

        Closing a publisher waits for its last batches, its shutdown state and
        its will's cancel; a thousand closed one after the other (an exit stack)
        take minutes, here they take about as long as the slowest. Each runs in a
        task of its own (a Publisher is entered and left in the same task).
        ``close_timeout`` defaults to 60 s + 0.2 s per device."""
        names = list(dict.fromkeys(devices))
        # Closing costs the homeserver about two events per device (shutdown state,
        # final sensor state) on top of its last batches; at the ~30 events/s seen
        # here a thousand take ~70 s, and a publisher cut short by close_timeout
        # leaves its goodbye to its will (in the soak, 60 s cut 179 of 1,000).
        kw.setdefault("close_timeout", 60.0 + 0.2 * len(names))
        opened: dict[str, Publisher] = {}
        close = anyio.Event()
        all_open = anyio.Event()
        limiter = anyio.CapacityLimiter(64)

        async def host(device: str) -> None:
            async with limiter:
                pub = await self.publisher(device, **kw).__aenter__()
            try:
                opened[device] = pub
                if len(opened) == len(names):
                    all_open.set()
                await close.wait()
            except BaseException:
                if not await pub.__aexit__(*sys.exc_info()):
                    raise
            else:
                await pub.__aexit__(None, None, None)

        async with anyio.create_task_group() as tg:
            for device in names:
                tg.start_soon(host, device)
            try:
                if names:
                    await all_open.wait()
                yield {d: opened[d] for d in names}
            except BaseException:
                # The body failed or was cancelled: the publishers say goodbye at
                # once (their unsent readings stay in the store), they do not drain.
                tg.cancel_scope.cancel()
                raise
            finally:
                close.set()

    async def _each(self, users: Iterable[str], fn: Callable[[str], Awaitable[None]]) -> None:
        limiter = anyio.CapacityLimiter(self._concurrency)

        async def one(user: str) -> None:
            async with limiter:
                await fn(user)

        async with anyio.create_task_group() as tg:
            for user in users:
                tg.start_soon(one, user)

    async def _register(self, user: str) -> None:
        try:
            await self._client.request(api.register_appservice_user(user[1:].split(":", 1)[0]))
        except MatrixError as exc:
            if exc.errcode != "M_USER_IN_USE":
                raise

    async def add_devices(self, devices: Iterable[str], *, group: str | None = None,
                          level: int = 50) -> list[str]:
        """Register the users of ``devices``, let them into their rooms (of
        ``group``, default ``"fleet"``) with power ``level``, join them; their user
        ids. Idempotent: devices already in a room of the group stay there, and a
        gateway started again finds them in a few requests per room."""
        users = [self._reg.user_id(d) for d in devices]
        if self._room is not None:
            if group is not None:
                raise ConfigError("group is for rooms the gateway makes; this gateway has one room")
            await self._into_one_room(users, level)
            self._users.update(users)
            return users
        group = validate_group(DEFAULT_GROUP if group is None else group)
        t0 = time.monotonic()
        shards = await self._fleet.load(group)
        known = {u for s in shards for u in s.members}
        fresh = [u for u in users if u not in known]
        await self._each(fresh, self._register)
        t1 = time.monotonic()
        shards = await self._fleet.place(group, users, level)
        t2 = time.monotonic()
        wanted = set(users)

        async def join(user: str, shard: Shard) -> None:
            await self._client.request(api.as_appservice(api.join(shard.room_id), user))
            shard.members[user] = "join"

        limiter = anyio.CapacityLimiter(self._concurrency)

        async def one(user: str, shard: Shard) -> None:
            async with limiter:
                await join(user, shard)

        async with anyio.create_task_group() as tg:
            for shard in shards:
                for user, membership in list(shard.members.items()):
                    if user in wanted:
                        self._room_of[user] = shard.room_id
                        if membership != "join":
                            tg.start_soon(one, user, shard)
        log.info("group %s: %d devices in %d rooms; registered %d in %.1fs, placed in %.1fs,"
                 " joined in %.1fs", group, len(users), len(shards), len(fresh), t1 - t0,
                 t2 - t1, time.monotonic() - t2)
        self._users.update(users)
        return users

    async def _refuse_encrypted(self, room: str) -> None:
        if await room_encrypted(self._client, room):
            raise _encrypted_room(room)

    @property
    def encrypted_rooms(self) -> list[str]:
        """Fleet rooms this gateway found end-to-end encrypted (turned on by an
        operator after the devices were placed): their devices take no commands."""
        return [s.room_id for s in self._fleet.encrypted]

    async def _into_one_room(self, users: list[str], level: int) -> None:
        room = self._room
        assert room is not None
        await self._refuse_encrypted(room)
        await self._each(users, self._register)
        # Fresh, not the state cache: another add_devices (an MQTT device's birth
        # in the bridge) may have changed the levels a moment ago.
        pl = dict(await self._client.request(api.get_state(room, POWER_LEVELS)))
        levels = dict(pl.get("users", {}))
        if any(levels.get(u) != level for u in users):
            levels.update({u: level for u in users})
            pl["users"] = levels
            await self._client.request(api.put_state(room, POWER_LEVELS, "", pl))

        async def let_in(user: str) -> None:
            try:
                await self._client.request(api.invite(room, user))
            except MatrixError as exc:
                if exc.errcode != "M_FORBIDDEN":  # already in the room
                    raise
            await self._client.request(api.as_appservice(api.join(room), user))

        await self._each(users, let_in)

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
        if self._room is not None:
            try:
                encrypted = await room_encrypted(self._client, self._room)
            except MxsyncError as exc:  # not joined yet, or down: add_devices checks again
                log.debug("could not read the encryption state of %s: %s", self._room, exc)
            else:
                if encrypted:
                    raise _encrypted_room(self._room)
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
