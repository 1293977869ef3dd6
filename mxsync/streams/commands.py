"""Commands to devices: the operator's call and the device's inbox (PROTOCOL.md section 6).

Owns both ends of ``org.mxsync.command`` / ``org.mxsync.command.result``:

- :func:`send_command` (behind ``Subscriber.command``): checks the caller's
  power level, looks for a result a previous attempt of the same id already
  got, sends the command and waits for the device's acknowledgement;
- :class:`CommandInbox` (run by every ``Publisher``): takes the commands for
  its device, live and those sent while it was away, and hands them to the
  application (``Publisher.commands()``) as :class:`Command` objects;
- the table ``stream_command`` in the client's store: the ids a device took.

Invariants:
- At most once: a command id is recorded in the store (committed) before the
  application sees it, and its result is staged in the same transaction as
  the outbox entry that carries it. A retry of a known id is never handed out
  again; if its result is known and older than the retry (the caller, who
  looks back for an answer before retrying, did not find it), it is sent again. A command whose run
  a crash interrupted is answered ``"interrupted"`` at the next start, never
  run again.
- A command counts only if its sender had the level for ``org.mxsync.command``
  where it stands in the timeline (PROTOCOL.md 1.3); others are ignored and
  logged once per sender. Results count likewise, and only from the user that
  announced the device when the room says who that is.
- A command after its ``expires_ms`` is answered ``"expired"`` and not run.
- Commands sent while the device was away reach it: the inbox registers with
  the sync loop first, then looks back in the room (bounded by
  ``look_back``), and takes each command once, oldest first.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from ..engine.authz import PowerLevels, levels_backwards, room_creators
from ..engine.events import RoomEvent
from ..engine.outbox import Staging
from ..engine.surface import Engine
from ..errors import (
    CommandExpired,
    CommandFailed,
    CommandTimeout,
    ConfigError,
    ForbiddenError,
    MatrixError,
    ProtocolError,
)
from ..protocol.commands import (
    REBIRTH,
    CommandContent,
    ResultContent,
    ResultStatus,
    command_content,
    decode_command,
    decode_result,
    result_content,
    validate_command_id,
)
from ..protocol.readings import validate_device_id
from ..protocol.types import COMMAND, COMMAND_RESULT, CREATE, DEVICE, POWER_LEVELS

__all__ = ["Command", "CommandInbox", "send_command", "DEFAULT_EXPIRY"]

log = logging.getLogger("mxsync.streams.commands")

#: Seconds a command stays valid unless the caller says otherwise.
DEFAULT_EXPIRY = 300.0
#: Events a look-back (the device's at start, the caller's for a retry) reads at most.
_LOOK_BACK_EVENTS = 2_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stream_command (
    room_id  TEXT NOT NULL,
    device   TEXT NOT NULL,
    id       TEXT NOT NULL,
    taken_ms INTEGER NOT NULL,
    status   TEXT,
    result   BLOB,
    PRIMARY KEY (room_id, device, id)
);
"""

_encoder = msgspec.json.Encoder()


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- the store ----------------------------------------------------------------


def _ensure(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA)


def _known(conn: sqlite3.Connection, room: str, device: str,
           cid: str) -> tuple[str | None, bytes | None] | None:
    row = conn.execute("SELECT status, result FROM stream_command WHERE room_id=? AND device=?"
                       " AND id=?", (room, device, cid)).fetchone()
    return None if row is None else (row[0], row[1])


def _take(conn: sqlite3.Connection, room: str, device: str, cid: str) -> bool:
    """Record ``cid`` as taken; False if it was known already."""
    cur = conn.execute("INSERT OR IGNORE INTO stream_command (room_id, device, id, taken_ms)"
                       " VALUES (?, ?, ?, ?)", (room, device, cid, _now_ms()))
    return cur.rowcount == 1


def _interrupted(conn: sqlite3.Connection, room: str, device: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT id FROM stream_command WHERE room_id=? AND device=? AND status IS NULL",
        (room, device))]


# -- the device's side ----------------------------------------------------------


class Command:
    """One command for this device; answer it once with :meth:`ok` or :meth:`fail`."""

    __slots__ = ("id", "name", "args", "sender", "issued_ms", "expires_ms", "event_id",
                 "_inbox", "_done")

    def __init__(self, inbox: CommandInbox, cmd: CommandContent, ev: RoomEvent) -> None:
        self.id = cmd.id
        self.name = cmd.name
        self.args = cmd.args
        self.sender = ev.sender
        self.issued_ms = cmd.issued_ms
        self.expires_ms = cmd.expires_ms
        self.event_id = ev.event_id
        self._inbox = inbox
        self._done = False

    def __repr__(self) -> str:
        return f"<Command {self.id} {self.name} from {self.sender}>"

    @property
    def answered(self) -> bool:
        return self._done

    async def ok(self, result: Any = None) -> None:
        """Acknowledge: the command ran; ``result`` is canonical JSON (no floats)."""
        await self._answer("ok", result=result)

    async def fail(self, error: str) -> None:
        """Acknowledge: the command ran and failed with ``error`` (a text)."""
        if not isinstance(error, str) or not error:
            raise ConfigError("error must be a non-empty str")
        await self._answer("error", error=error)

    async def _answer(self, status: ResultStatus, **kw: Any) -> None:
        if self._done:
            raise RuntimeError(f"command {self.id} was answered already")
        content = result_content(self.id, self._inbox.device, status, done_ms=_now_ms(), **kw)
        self._done = True
        await self._inbox.answer(self.id, content)


class CommandInbox:
    """The commands of one device in one room (run by its Publisher)."""

    def __init__(
        self,
        client: Engine,
        room_id: str,
        device: str,
        *,
        rebirth: Callable[[], Awaitable[None]],
        look_back: float = 3600.0,
        buffer: int = 256,
    ) -> None:
        self._client = client
        self._room = room_id
        self.device = device
        self._rebirth = rebirth
        self._look_back_ms = int(look_back * 1000)
        self._send, self._recv = anyio.create_memory_object_stream[Command](buffer)
        self._lane = f"command/{device}"
        self._levels = PowerLevels()
        self._warned: set[str] = set()
        #: Command events taken into account in this run.
        self._seen: set[str] = set()
        #: Commands handed to the application, rebirths done, and the ones refused.
        self.received = 0
        self.rebirths = 0
        self.ignored = 0
        self.expired = 0
        self.resent = 0

    # -- running -----------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Register, answer what a crash interrupted, look back, then follow live."""
        client, room = self._client, self._room
        await client.run_sql(_ensure)
        creators = room_creators(await client.state_event(room, CREATE))
        async with client.room_events(room, (COMMAND, POWER_LEVELS)) as recv:
            self._levels = PowerLevels(await client.get_state(room, POWER_LEVELS), creators)
            task_status.started()
            await self._answer_interrupted()
            for ev, levels in await self._past(creators):
                await self._on_command(ev, levels)
            async for ev in recv:
                if ev.type == POWER_LEVELS:
                    self._levels = self._levels.after(ev)
                elif ev.type == COMMAND and ev.state_key is None:
                    await self._on_command(ev, self._levels)

    def commands(self) -> MemoryObjectReceiveStream[Command]:
        return self._recv

    async def _answer_interrupted(self) -> None:
        room, device = self._room, self.device
        ids = await self._client.run_sql(lambda c: _interrupted(c, room, device))
        for cid in ids:
            log.warning("device %s: command %s was interrupted by a restart; not run again",
                        device, cid)
            await self.answer(cid, result_content(cid, device, "interrupted", done_ms=_now_ms(),
                                                  error="the device restarted while running it"))

    async def _past(self, creators: frozenset[str]) -> list[tuple[RoomEvent, PowerLevels]]:
        """Commands sent within ``look_back`` before now, oldest first, with their levels."""
        since = _now_ms() - self._look_back_ms
        found: list[tuple[RoomEvent, PowerLevels]] = []
        seen = 0
        async for page in self._client.pages(self._room, None, direction="b", limit=100,
                                             types=[COMMAND, POWER_LEVELS]):
            levels = await levels_backwards(self._client, self._room, page, creators)
            old = False
            for ev, in_force in zip(page.events, levels, strict=True):
                seen += 1
                if ev.origin_server_ts < since:
                    old = True
                    break
                if ev.type == COMMAND and ev.state_key is None:
                    found.append((ev, in_force))
            if old or seen >= _LOOK_BACK_EVENTS:
                break
        found.reverse()
        return found

    # -- one command ------------------------------------------------------------

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    async def _on_command(self, ev: RoomEvent, levels: PowerLevels) -> None:
        try:
            cmd = decode_command(ev.content)
        except ProtocolError as exc:
            self._warn_once("malformed " + ev.sender, "skipping malformed command %s of %s: %s",
                            ev.event_id, ev.sender, exc)
            return
        if cmd.device != self.device:
            return
        if not levels.allows(ev):
            self.ignored += 1
            self._warn_once("forbidden " + ev.sender,
                            "device %s ignores commands of %s: no power level for them",
                            self.device, ev.sender)
            return
        if ev.event_id in self._seen:
            return  # met in the look-back and again live
        self._seen.add(ev.event_id)
        room, device = self._room, self.device
        known = await self._client.run_sql(lambda c: _known(c, room, device, cmd.id))
        if known is not None:
            status, result = known
            if status is not None and result is not None:
                answer = msgspec.json.decode(result)
                if ev.origin_server_ts > answer.get("done_ms", 0):
                    # A retry sent after the answer: the caller looks back for it first,
                    # so it did not find it (too far back). The answer again, no new run.
                    self.resent += 1
                    await self._client.send(room, COMMAND_RESULT, answer, lane=self._lane)
            return
        if _now_ms() > cmd.expires_ms:
            self.expired += 1
            log.info("device %s: command %s expired before it arrived; not run", device, cmd.id)
            await self.answer(cmd.id, result_content(cmd.id, device, "expired",
                                                     done_ms=_now_ms()), take=True)
            return
        if not await self._client.run_sql(lambda c: _take(c, room, device, cmd.id)):
            return
        command = Command(self, cmd, ev)
        if cmd.name == REBIRTH:
            self.rebirths += 1
            try:
                await self._rebirth()
            except MatrixError as exc:
                await command.fail(f"rebirth failed: {exc}")
            else:
                await command.ok()
            return
        try:
            self._send.send_nowait(command)
        except anyio.WouldBlock:
            await command.fail("the device's command queue is full")
            return
        self.received += 1

    async def answer(self, cid: str, content: dict[str, Any], *, take: bool = False) -> None:
        """Store the answer to ``cid`` and stage its event, in one transaction."""
        room, device = self._room, self.device
        data = _encoder.encode(content)

        def stage(s: Staging) -> None:
            if take:
                _take(s.conn, room, device, cid)
            s.conn.execute("UPDATE stream_command SET status=?, result=? WHERE room_id=? AND"
                           " device=? AND id=?", (content["status"], data, room, device, cid))
            s.add(self._client.new_entry(room, COMMAND_RESULT, content, lane=self._lane))

        await self._client.stage(stage)


# -- the operator's side ----------------------------------------------------------


def new_command_id() -> str:
    return "c" + secrets.token_hex(12)


async def send_command(
    client: Engine,
    room_id: str,
    device: str,
    name: str,
    args: dict[str, Any] | None = None,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - the timeout's error names the command id
    command_id: str | None = None,
    expiry: float = DEFAULT_EXPIRY,
) -> Any:
    """Send a command to ``device`` and return its result (see ``Subscriber.command``)."""
    validate_device_id(device)
    cid = new_command_id() if command_id is None else validate_command_id(command_id)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"timeout must be a number > 0, got {timeout!r}")
    if not isinstance(expiry, int | float) or expiry <= 0:
        raise ConfigError(f"expiry must be a number > 0, got {expiry!r}")
    issued = _now_ms()
    content = command_content(cid, device, name, args, issued_ms=issued,
                              expires_ms=issued + int(expiry * 1000))
    if not await client.may_send(room_id, client.user_id, COMMAND):
        raise ForbiddenError(403, "M_FORBIDDEN",
                             f"{client.user_id} has no power level to send {COMMAND} in"
                             f" {room_id}")
    creators = room_creators(await client.state_event(room_id, CREATE))
    try:
        with anyio.fail_after(timeout):
            async with client.room_events(room_id, (COMMAND_RESULT, POWER_LEVELS)) as recv:
                levels = PowerLevels(await client.get_state(room_id, POWER_LEVELS), creators)
                announced = await client.state_event(room_id, DEVICE, device)
                owner = None if announced is None else announced.sender
                if command_id is not None:
                    res = await _earlier_result(client, room_id, device, cid, owner, creators)
                    if res is not None:
                        return _outcome(res)
                handle = await client.send(room_id, COMMAND, content, lane=f"command-to/{device}")
                await handle.wait()
                async for ev in recv:
                    if ev.type == POWER_LEVELS:
                        levels = levels.after(ev)
                        continue
                    res = _result_for(ev, levels, device, cid, owner)
                    if res is not None:
                        return _outcome(res)
    except TimeoutError:
        raise CommandTimeout(cid, device, f"no answer within {timeout:g}s") from None
    raise CommandTimeout(cid, device, "the client stopped before an answer came")


def _result_for(ev: RoomEvent, levels: PowerLevels, device: str, cid: str,
                owner: str | None) -> ResultContent | None:
    if ev.type != COMMAND_RESULT or ev.state_key is not None:
        return None
    try:
        res = decode_result(ev.content)
    except ProtocolError as exc:
        log.debug("skipping malformed command result %s: %s", ev.event_id, exc)
        return None
    if res.id != cid or res.device != device:
        return None
    if not levels.allows(ev) or (owner is not None and ev.sender != owner):
        log.warning("ignoring a result for command %s from %s: not the device's sender or"
                    " no power level", cid, ev.sender)
        return None
    return res


async def _earlier_result(client: Engine, room_id: str, device: str, cid: str,
                          owner: str | None, creators: frozenset[str]) -> ResultContent | None:
    """The result an earlier attempt of ``cid`` got, looking back (bounded)."""
    seen = 0
    async for page in client.pages(room_id, None, direction="b", limit=100,
                                   types=[COMMAND_RESULT, POWER_LEVELS]):
        levels = await levels_backwards(client, room_id, page, creators)
        for ev, in_force in zip(page.events, levels, strict=True):
            res = _result_for(ev, in_force, device, cid, owner)
            if res is not None:
                return res
        seen += len(page.events)
        if seen >= _LOOK_BACK_EVENTS:
            break
    return None


def _outcome(res: ResultContent) -> Any:
    if res.status == "ok":
        return res.result
    if res.status == "error":
        raise CommandFailed(res.id, res.device, res.error or "error")
    raise CommandExpired(res.id, res.device, res.status)


async def iterate(recv: MemoryObjectReceiveStream[Command]) -> AsyncIterator[Command]:
    """The commands of ``recv`` one by one (``Publisher.commands``)."""
    async for cmd in recv:
        yield cmd


