"""The rooms of a fleet: which room each device of a gateway lives in, and how
those rooms are made and found again.

A fleet is a set of *groups*, named by the operator after what a fleet is made
of (a site, a building, a production line; ``"fleet"`` when nobody says). Each
group is one or more rooms ("shards") of at most ``room_size`` devices, found
by alias: shard ``k`` of group ``g`` is ``#<sender_localpart>_<g>.<k>:server``
(``#fleet_site-a.1:example.org``), in the alias namespace the registration
reserves for the gateway. Why rooms of a bounded size: every event in a room
costs the homeserver push-rule evaluation and a notification count for each
member, so one room of 1,000 device users makes every event cost 1,000 times
that (Synapse on SQLite was measured at one event per ~2 s there); 50 members
keep events cheap, and separate rooms are created in parallel.

Invariants:
- The homeserver is the record: a device belongs to the shard of its group in
  which it is a member (joined or invited). Nothing about placement lives in
  the gateway's store, so a gateway started again (or on another machine with
  the same registration) puts every device back where it was, in one alias
  lookup and one member list per shard.
- A new device fills the group's shards in order, then new shards; a shard is
  created with its devices invited and their power levels set in the
  ``createRoom`` request itself (no extra power-level events).
- Creating a shard that exists (a run cut short between the homeserver's answer
  and ours) is answered by taking the existing room (M_ROOM_IN_USE).
- Shards are never end-to-end encrypted: the gateway cannot read encrypted
  events (:data:`E2EE_LIMIT`). A shard the homeserver made encrypted on its own
  (``encryption_enabled_by_default_for_room_type``) is a ConfigError; a shard an
  operator encrypted later takes no new devices (they go to the next shard),
  and its devices are reported (logged at error level, :attr:`FleetRooms.encrypted`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import ConfigError, MatrixError
from ..protocol import api
from ..protocol.types import ENCRYPTION, MEMBER, POWER_LEVELS, room_power_levels

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["DEFAULT_GROUP", "E2EE_LIMIT", "FleetRooms", "Shard", "room_body", "room_encrypted",
           "validate_group"]

log = logging.getLogger("mxsync.fleet.rooms")

DEFAULT_GROUP = "fleet"

#: Why a fleet room must not be end-to-end encrypted, and what to do (logs and errors).
E2EE_LIMIT = (
    "the fleet gateway cannot decrypt events: an application service user has no Olm"
    " device that receives room keys (appservice encryption, MSC2409/MSC3202, is"
    " experimental), so commands sent in an encrypted room never reach its devices."
    " Use an unencrypted room for the fleet (encryption cannot be turned off in a"
    " room: make a new one)"
)
_GROUP = re.compile(r"[a-z0-9_=-]{1,64}")


def validate_group(group: str) -> str:
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise ConfigError(
            f"a fleet group is 1..64 of a-z 0-9 _ = - (a site, an area), got {group!r}")
    return group


def room_body(*, name: str, alias_localpart: str, invite: Iterable[str],
              levels: Mapping[str, int]) -> dict[str, Any]:
    """The ``createRoom`` body of one shard: private, its members invited, and their
    levels in ``power_level_content_override`` (the levels ``Client.create_room``
    gives: mxsync's types need 50, power levels 100)."""
    return {
        "preset": "private_chat",
        "name": name,
        "room_alias_name": alias_localpart,
        "invite": list(invite),
        "power_level_content_override": room_power_levels(dict(levels)),
    }


async def room_encrypted(client: Client, room_id: str) -> bool:
    """Does ``room_id`` have ``m.room.encryption`` (read fresh from the homeserver)?"""
    try:
        await client.request(api.get_state(room_id, ENCRYPTION))
    except MatrixError as exc:
        if exc.errcode == "M_NOT_FOUND":
            return False
        raise
    return True


class Shard:
    """One room of a group and its device users (membership as the server has it)."""

    __slots__ = ("group", "index", "room_id", "members", "encrypted")

    def __init__(self, group: str, index: int, room_id: str,
                 members: dict[str, str] | None = None, *, encrypted: bool = False) -> None:
        self.group = group
        self.index = index
        self.room_id = room_id
        #: Device user -> "join" or "invite".
        self.members: dict[str, str] = members or {}
        #: The room has ``m.room.encryption`` (an operator turned it on): no new devices.
        self.encrypted = encrypted


class FleetRooms:
    """Places device users into the shards of their group, creating rooms as needed.

    ``client`` is the appservice sender (its token is the as_token);
    ``alias_prefix`` is the localpart prefix of the shards' aliases,
    ``user_prefix`` that of the device users (only they count as devices).
    """

    def __init__(self, client: Client, *, server_name: str, alias_prefix: str,
                 user_prefix: str, room_size: int, operators: Mapping[str, int],
                 parallel: int = 4) -> None:
        self._client = client
        self._server = server_name
        self._alias_prefix = alias_prefix
        self._user_prefix = f"@{user_prefix}"
        self._size = room_size
        self._operators = dict(operators)
        self._parallel = parallel
        self._groups: dict[str, list[Shard]] = {}

    def alias(self, group: str, index: int) -> str:
        return f"#{self._alias_prefix}{group}.{index}:{self._server}"

    @property
    def groups(self) -> dict[str, list[Shard]]:
        return self._groups

    @property
    def encrypted(self) -> list[Shard]:
        """The shards found end-to-end encrypted (their devices take no commands)."""
        return [s for shards in self._groups.values() for s in shards if s.encrypted]

    async def load(self, group: str) -> list[Shard]:
        """The group's shards as the homeserver has them (alias 1, 2, ... until one is missing)."""
        if group in self._groups:
            return self._groups[group]
        shards: list[Shard] = []
        while True:
            room = await self._resolve(self.alias(group, len(shards) + 1))
            if room is None:
                break
            shard = Shard(group, len(shards) + 1, room, await self._members(room),
                          encrypted=await room_encrypted(self._client, room))
            if shard.encrypted:
                self._report(shard)
            shards.append(shard)
        self._groups[group] = shards
        return shards

    def _report(self, shard: Shard) -> None:
        log.error("shard %s (%s) is end-to-end encrypted: its %d device(s) take no commands"
                  " and new devices go to other shards; %s", self.alias(shard.group, shard.index),
                  shard.room_id, len(shard.members), E2EE_LIMIT)

    async def place(self, group: str, users: list[str], level: int) -> list[Shard]:
        """Put ``users`` that are in no shard of ``group`` into one: fill shards with
        room, then create new ones; the group's shards. Users placed now are members
        as "invite" (the caller joins them).

        Existing shards that take users get them invited after one power-levels
        update; new shards get them in ``createRoom``."""
        shards = await self.load(group)
        placed = {u for s in shards for u in s.members}
        todo = [u for u in dict.fromkeys(users) if u not in placed]
        for shard in shards:
            space = self._size - len(shard.members)
            if space > 0 and todo and not shard.encrypted:
                # Fresh: an operator may have turned encryption on since the load.
                if await room_encrypted(self._client, shard.room_id):
                    shard.encrypted = True
                    self._report(shard)
                    continue
                take, todo = todo[:space], todo[space:]
                await self._grant(shard.room_id, take, level)
                shard.members.update(dict.fromkeys(take, "invite"))
        chunks = [todo[i:i + self._size] for i in range(0, len(todo), self._size)]
        made: dict[int, Shard] = {}
        refused: list[ConfigError] = []
        limiter = anyio.CapacityLimiter(self._parallel)

        async def make(index: int, take: list[str]) -> None:
            async with limiter:
                try:
                    shard, existed = await self._create(group, index, take, level)
                except ConfigError as exc:  # raised below, not wrapped in an ExceptionGroup
                    refused.append(exc)
                    return
                if existed:
                    await self._grant(shard.room_id, take, level)
            for user in take:
                shard.members.setdefault(user, "invite")
            made[index] = shard

        # Rooms are independent: the homeserver creates them in parallel.
        async with anyio.create_task_group() as tg:
            for i, take in enumerate(chunks):
                tg.start_soon(make, len(shards) + 1 + i, take)
        if refused:
            # Nothing of this placement is kept: the next load reads the rooms made.
            self._groups.pop(group, None)
            raise refused[0]
        shards.extend(made[i] for i in sorted(made))
        return shards

    async def _create(self, group: str, index: int, users: list[str],
                      level: int) -> tuple[Shard, bool]:
        """Create shard ``index`` with ``users`` invited; (shard, whether it existed)."""
        alias = self.alias(group, index)
        levels = {**{u: level for u in users}, **self._operators}
        body = room_body(name=f"{group} {index}", alias_localpart=self._alias_local(group, index),
                         invite=[*users, *self._operators], levels=levels)
        try:
            answer = await self._client.request(api.create_room(body))
        except MatrixError as exc:
            if exc.errcode != "M_ROOM_IN_USE":
                raise
            room = await self._resolve(alias)
            if room is None:
                raise
            log.info("shard %s exists already; taking it", alias)
            if await room_encrypted(self._client, room):
                raise ConfigError(
                    f"shard {alias} ({room}) is end-to-end encrypted; {E2EE_LIMIT}") from None
            return Shard(group, index, room, await self._members(room)), True
        room_id = answer.get("room_id")
        if not isinstance(room_id, str):
            raise MatrixError(200, "M_UNKNOWN", "createRoom answered without a room_id")
        if await room_encrypted(self._client, room_id):
            # createRoom has no way to say "unencrypted": the homeserver's own
            # default did it (Synapse: encryption_enabled_by_default_for_room_type).
            raise ConfigError(
                f"the homeserver made the new shard {alias} ({room_id}) end-to-end encrypted"
                " (Synapse: set encryption_enabled_by_default_for_room_type to off); "
                + E2EE_LIMIT)
        log.info("created %s (%s) for %d devices", alias, room_id, len(users))
        return Shard(group, index, room_id), False

    def _alias_local(self, group: str, index: int) -> str:
        return f"{self._alias_prefix}{group}.{index}"

    async def _resolve(self, alias: str) -> str | None:
        try:
            answer = await self._client.request(api.room_alias(alias))
        except MatrixError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        room = answer.get("room_id")
        return room if isinstance(room, str) else None

    async def _members(self, room_id: str) -> dict[str, str]:
        answer = await self._client.request(api.room_members(room_id))
        members: dict[str, str] = {}
        for ev in answer.get("chunk") or []:
            if not isinstance(ev, dict) or ev.get("type") != MEMBER:
                continue
            user, content = ev.get("state_key"), ev.get("content")
            membership = content.get("membership") if isinstance(content, dict) else None
            if (isinstance(user, str) and user.startswith(self._user_prefix)
                    and membership in ("join", "invite")):
                members[user] = membership
        return members

    async def _grant(self, room_id: str, users: list[str], level: int) -> None:
        """Give ``users`` their level (one power-levels update) and invite them."""
        pl = dict(await self._client.get_state(room_id, POWER_LEVELS) or {})
        levels = dict(pl.get("users", {}))
        if any(levels.get(u) != level for u in users):
            levels.update({u: level for u in users})
            pl["users"] = levels
            await self._client.request(api.put_state(room_id, POWER_LEVELS, "", pl))
        for user in users:
            try:
                await self._client.request(api.invite(room_id, user))
            except MatrixError as exc:
                if exc.errcode != "M_FORBIDDEN":  # already in the room
                    raise
