"""The appservice's HTTP endpoint: what the homeserver pushes to the fleet gateway.

Synapse serves no ``/sync`` to application services: it *pushes* the events of
the rooms the service is interested in (those its users are in) to the
registration's ``url``. :class:`TransactionEndpoint` owns that side of the
Application Service API (an aiohttp server, loopback by default):

- ``PUT /_matrix/app/v1/transactions/{txnId}``: a transaction; its ``events``
  are handed to the client's consumers (``Connection.push_events``, the same
  dispatch a sync batch goes through: a device's CommandInbox takes its
  ``org.mxsync.command`` events there, with every guarantee it has);
- ``GET /_matrix/app/v1/users/{userId}``: 200 ``{}`` if the gateway owns (and
  has registered) that user, else 404; ``GET /_matrix/app/v1/rooms/{alias}``:
  404 (the registration claims no aliases); ``POST /_matrix/app/v1/ping``: 200;
- the same under the legacy unprefixed paths (``/transactions/{txnId}``, ...)
  that the spec lets homeservers fall back to;
- the table ``appservice_txn`` in the client's store: the transaction ids handled.

Invariants:
- Nothing is read before the ``hs_token`` is checked (constant-time compare):
  ``Authorization: Bearer``, or ``?access_token=`` (older homeservers; Synapse
  with ``use_appservice_legacy_authorization``); both must match when both are
  given. None: 401 ``M_UNAUTHORIZED``; a wrong one: 403 ``M_FORBIDDEN``.
- A transaction is acknowledged (200) only after its events have been handed
  to the consumers, and its id is recorded after that. A crash in between
  makes the homeserver push it again (Synapse retries a transaction until it
  gets 200, oldest first, backing off 2 s .. 512 s): handing events out twice is
  harmless (the dispatch drops ids it delivered in this run; a CommandInbox
  takes a command id once, in its store). A transaction whose id and event ids
  are recorded is acknowledged at once and hands out nothing; the same id with
  other events (a homeserver whose database was reset) is handled as new.
- One transaction id is handled at a time; a retry arriving meanwhile waits
  for the first attempt's outcome.
- A body that is not JSON is refused (400 ``M_NOT_JSON``, it is no
  transaction); a JSON transaction of the wrong shape and malformed events in
  a good one are skipped, logged and counted, and the transaction is
  acknowledged (refusing it would stop the homeserver's queue for good).
- Backpressure: consumers that do not take the events hold the
  acknowledgement back; after ``ack_timeout`` the homeserver gets 503 and
  pushes the transaction again later.
- End-to-end encrypted events (``m.room.encrypted``) cannot be decrypted (an
  appservice user has no Olm device that receives room keys; see
  :data:`~mxsync.fleet.rooms.E2EE_LIMIT`): they are never handed out, but never
  silently either. They are counted (``encrypted``), the first of each room
  in a run is logged with the room id and what to do, and the room gets one
  ``m.notice`` from the gateway's sender saying so (the operator who sent a
  command sees why it goes unanswered). An ``m.room.encryption`` event (an
  operator turning encryption on in a fleet room) is logged at error level,
  counted (``encryption_enabled``) and noticed the same way.
- What the gateway missed while it was down arrives when it is back: the
  homeserver kept the transactions, :meth:`TransactionEndpoint.ping` makes
  Synapse retry them at once (its ping forces a retry), and a CommandInbox
  also looks back in the room when it starts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import anyio
import msgspec
from aiohttp import web

from ..engine.events import RoomEvent, parse_event
from ..errors import ConfigError, MatrixError, MxsyncError
from ..protocol import api
from ..protocol.types import ENCRYPTED, ENCRYPTION
from .rooms import E2EE_LIMIT

if TYPE_CHECKING:
    import sqlite3

__all__ = ["TransactionEndpoint", "TransactionStatistics", "listen_address"]

log = logging.getLogger("mxsync.fleet.transactions")

T = TypeVar("T")

_PREFIX = "/_matrix/app/v1"
#: Transaction ids remembered per service; older ones are forgotten (the
#: homeserver retries only its oldest unacknowledged ones).
_KEEP_TXNS = 10_000
#: The largest transaction body taken: Synapse sends at most 100 events (each
#: at most 64 KiB), 100 ephemeral events and 100 to-device messages.
_MAX_BODY = 32 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS appservice_txn (
    service TEXT NOT NULL,
    txn_id  TEXT NOT NULL,
    digest  TEXT NOT NULL,
    done_ms INTEGER NOT NULL,
    events  INTEGER NOT NULL,
    PRIMARY KEY (service, txn_id)
);
"""

_decoder = msgspec.json.Decoder()

#: The ``m.notice`` body a room gets when the gateway finds it encrypted.
E2EE_NOTICE = (
    "This room is end-to-end encrypted, and the mxsync fleet gateway cannot decrypt"
    " messages: commands sent here do not reach its devices. Use an unencrypted room"
    " for the fleet's devices."
)


class TransactionStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`TransactionEndpoint.statistics` reports since it started."""

    #: Transactions handled (acknowledged after handing out their events).
    transactions: int
    #: Transactions acknowledged again without handing anything out (known ids).
    repeats: int
    #: Events handed to the consumers, and events not handed out: malformed,
    #: of a type the client does not follow, or handed out already in this run.
    delivered: int
    skipped: int
    #: Transactions of the wrong shape (acknowledged, nothing handed out).
    malformed: int
    #: Requests refused for a missing or wrong hs_token.
    refused: int
    #: User queries answered 200, and 404.
    users_found: int
    users_unknown: int
    #: End-to-end encrypted events (``m.room.encrypted``): the gateway cannot
    #: decrypt them, so they are not handed out (also counted in ``skipped``).
    encrypted: int = 0
    #: ``m.room.encryption`` events: encryption turned on in a room of the gateway.
    encryption_enabled: int = 0


def listen_address(url: str | None, host: str | None = None,
                   port: int | None = None) -> tuple[str, int]:
    """Where to listen for the registration ``url``: ``host`` (default
    127.0.0.1: the homeserver reaches the gateway on loopback unless told
    otherwise), ``port`` (default: the url's)."""
    if port is None:
        if url is None:
            raise ConfigError("the registration has no url: give the port to listen on")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"the registration's url must be http(s)://host:port, got {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"the registration's url has a bad port: {url!r}") from None
        if port is None:
            raise ConfigError(f"the registration's url names no port ({url!r}): give one")
    if type(port) is not int or not 0 <= port < 65536:
        raise ConfigError(f"port must be within 0..65535, got {port!r}")
    return host or "127.0.0.1", port


def _digest(event_ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(event_ids).encode()).hexdigest()[:32]


# -- the store ----------------------------------------------------------------


def _ensure(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA)


def _recorded(conn: sqlite3.Connection, service: str, txn_id: str) -> str | None:
    row = conn.execute("SELECT digest FROM appservice_txn WHERE service=? AND txn_id=?",
                       (service, txn_id)).fetchone()
    return None if row is None else str(row[0])


def _record(conn: sqlite3.Connection, service: str, txn_id: str, digest: str,
            events: int) -> None:
    conn.execute("INSERT OR REPLACE INTO appservice_txn (service, txn_id, digest, done_ms,"
                 " events) VALUES (?, ?, ?, ?, ?)",
                 (service, txn_id, digest, int(time.time() * 1000), events))
    conn.execute("DELETE FROM appservice_txn WHERE service=? AND rowid <= "
                 "(SELECT max(rowid) FROM appservice_txn) - ?", (service, _KEEP_TXNS))


# -- the endpoint -----------------------------------------------------------------


class Target(Protocol):
    """What the endpoint needs of the client (a Client is one): the dispatch,
    the store, one request."""

    async def push_events(self, events: Iterable[RoomEvent]) -> int: ...

    async def run_sql(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def request(self, req: api.Request) -> dict[str, Any]: ...


def _error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


class TransactionEndpoint:
    """Serves the homeserver's pushes for one application service; an async
    context manager (listening while the block runs).

    ``client`` is the gateway's Client (the registration's sender, as_token);
    ``service_id`` and ``hs_token`` come from the registration. ``host``/``port``:
    where to listen (port 0 picks a free one: see :attr:`port`). ``users``:
    an async predicate answering the homeserver's user queries (None: every
    user is unknown, 404). ``ack_timeout``: how long a transaction may wait for
    slow consumers before the homeserver is told to retry it later.
    """

    def __init__(
        self,
        client: Target,
        service_id: str,
        hs_token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Callable[[str], Awaitable[bool]] | None = None,
        ack_timeout: float = 30.0,
    ) -> None:
        if not isinstance(hs_token, str) or not hs_token:
            raise ConfigError("hs_token must be a non-empty str")
        if type(port) is not int or not 0 <= port < 65536:
            raise ConfigError(f"port must be within 0..65535, got {port!r}")
        if not isinstance(ack_timeout, int | float) or ack_timeout <= 0:
            raise ConfigError(f"ack_timeout must be a number > 0, got {ack_timeout!r}")
        self._client = client
        self._service = service_id
        self._token = hs_token.encode()
        self._host, self._port = host, port
        self._users = users
        self._ack_timeout = float(ack_timeout)
        self._runner: web.AppRunner | None = None
        #: txn id -> set once its first attempt has finished.
        self._running: dict[str, anyio.Event] = {}
        self._transactions = self._repeats = self._delivered = self._skipped = 0
        self._malformed = self._refused = self._found = self._unknown = 0
        self._warned: set[str] = set()
        self._encrypted = self._encryption_enabled = 0
        #: Rooms whose encrypted events were reported, and rooms noticed, in this run.
        self._e2ee_rooms: set[str] = set()
        self._noticed: set[str] = set()

    # -- lifecycle --------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the one picked when created with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def __aenter__(self) -> TransactionEndpoint:
        await self._client.run_sql(_ensure)
        app = web.Application(client_max_size=_MAX_BODY)
        for prefix in (_PREFIX, ""):
            app.router.add_put(prefix + "/transactions/{txn_id}", self._on_transaction)
            app.router.add_get(prefix + "/users/{user_id}", self._on_user)
            app.router.add_get(prefix + "/rooms/{alias}", self._on_room)
        app.router.add_post(_PREFIX + "/ping", self._on_ping)
        app.middlewares.append(self._middleware)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {self._host}:{self._port}: {exc}") from None
        self._runner = runner
        for address in runner.addresses:  # the port picked for port 0
            self._port = int(address[1])
            break
        log.info("appservice %s: taking the homeserver's transactions on %s", self._service,
                 self.url)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()

    async def ping(self) -> bool:
        """Ask the homeserver to reach this endpoint (``/appservice/{id}/ping``).

        True if it did; Synapse then retries at once what it holds for a service
        it found down. A failure is logged (a wrong url in the registration, or
        a homeserver without the ping endpoint), not raised."""
        try:
            await self._client.request(api.appservice_ping(self._service))
        except MxsyncError as exc:
            log.warning("appservice %s: the homeserver could not reach %s (%s); check the"
                        " registration's url", self._service, self.url, exc)
            return False
        return True

    def statistics(self) -> TransactionStatistics:
        return TransactionStatistics(
            transactions=self._transactions, repeats=self._repeats,
            delivered=self._delivered, skipped=self._skipped, malformed=self._malformed,
            refused=self._refused, users_found=self._found, users_unknown=self._unknown,
            encrypted=self._encrypted, encryption_enabled=self._encryption_enabled,
        )

    # -- authentication -------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        denied = self._check_token(request)
        if denied is not None:
            return denied
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed:
            return _error(405, "M_UNRECOGNIZED", "unsupported method")
        except web.HTTPNotFound:
            return _error(404, "M_UNRECOGNIZED", "unknown endpoint")

    def _check_token(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        bearer: str | None = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            bearer = value.strip() if scheme.lower() == "bearer" else ""
        query = request.query.get("access_token")
        given = [t for t in (bearer, query) if t is not None]
        if not given:
            self._refused += 1
            return _error(401, "M_UNAUTHORIZED", "no hs_token given")
        # Every given token must match (compare_digest: no timing clue about it).
        if not all(hmac.compare_digest(t.encode(), self._token) for t in given):
            self._refused += 1
            self._warn_once("token", "appservice %s: refused a request with a wrong hs_token"
                            " from %s", self._service, request.remote)
            return _error(403, "M_FORBIDDEN", "wrong hs_token")
        return None

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # -- the routes -------------------------------------------------------------------

    async def _on_ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _on_room(self, request: web.Request) -> web.Response:
        return _error(404, "M_NOT_FOUND", "no such room alias here")

    async def _on_user(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        found = False
        if self._users is not None:
            try:
                found = await self._users(user_id)
            except MxsyncError as exc:
                log.warning("appservice %s: user query for %s failed: %s", self._service,
                            user_id, exc)
        if found:
            self._found += 1
            return web.json_response({})
        self._unknown += 1
        return _error(404, "M_NOT_FOUND", "no such user here")

    async def _on_transaction(self, request: web.Request) -> web.Response:
        txn_id = request.match_info["txn_id"]
        try:
            body = _decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            return _error(400, "M_NOT_JSON", f"not JSON: {exc}")
        raws = body.get("events") if isinstance(body, dict) else None
        if not isinstance(raws, list):
            self._malformed += 1
            self._warn_once("shape", "appservice %s: transaction %s has no events list;"
                            " acknowledged, nothing taken", self._service, txn_id)
            raws = []
        events = self._parse(txn_id, raws)
        digest = _digest(ev.event_id for ev in events)
        while (running := self._running.get(txn_id)) is not None:
            await running.wait()  # the homeserver retried while the first attempt ran
        self._running[txn_id] = finished = anyio.Event()
        try:
            service = self._service
            known = await self._client.run_sql(lambda c: _recorded(c, service, txn_id))
            if known == digest:
                self._repeats += 1
                log.debug("appservice %s: transaction %s again; already handled", service,
                          txn_id)
                return web.json_response({})
            if known is not None:
                log.warning("appservice %s: transaction id %s again with other events (was"
                            " the homeserver reset?); handled as new", service, txn_id)
            await self._report_encryption(events)
            try:
                with anyio.fail_after(self._ack_timeout):
                    delivered = await self._client.push_events(events)
            except TimeoutError:
                log.warning("appservice %s: consumers took transaction %s too slowly; the"
                            " homeserver will push it again", service, txn_id)
                return _error(503, "M_UNKNOWN", "busy; push it again later")
            await self._client.run_sql(
                lambda c: _record(c, service, txn_id, digest, len(events)))
            self._transactions += 1
            self._delivered += delivered
            self._skipped += len(raws) - delivered
            return web.json_response({})
        except (MatrixError, RuntimeError) as exc:  # the store closed under us: stopping
            log.warning("appservice %s: transaction %s not taken: %s", self._service, txn_id,
                        exc)
            return _error(503, "M_UNKNOWN", "not taken; push it again later")
        finally:
            del self._running[txn_id]
            finished.set()

    async def _report_encryption(self, events: list[RoomEvent]) -> None:
        """The signal for what the gateway cannot read: never silence."""
        for ev in events:
            if ev.type == ENCRYPTION and ev.state_key == "":
                self._encryption_enabled += 1
                log.error("appservice %s: %s turned end-to-end encryption on in room %s (%s);"
                          " %s", self._service, ev.sender, ev.room_id, ev.event_id, E2EE_LIMIT)
                await self._encrypted_room(ev.room_id)
            elif ev.type == ENCRYPTED:
                self._encrypted += 1
                if ev.room_id not in self._e2ee_rooms:
                    self._e2ee_rooms.add(ev.room_id)
                    log.warning("appservice %s: room %s is end-to-end encrypted; skipping its"
                                " encrypted events (the first: %s from %s); %s", self._service,
                                ev.room_id, ev.event_id, ev.sender, E2EE_LIMIT)
                    await self._encrypted_room(ev.room_id)

    async def _encrypted_room(self, room_id: str) -> None:
        """Tell the room's members once per run (an ``m.notice`` from the sender)."""
        if room_id in self._noticed:
            return
        self._noticed.add(room_id)
        txn = "mxsync-e2ee-" + hashlib.sha256(room_id.encode()).hexdigest()[:16] + \
            f"-{int(time.time())}"
        try:
            with anyio.fail_after(10):
                await self._client.request(api.send_event(
                    room_id, "m.room.message", txn, {"msgtype": "m.notice", "body": E2EE_NOTICE}))
        except (MxsyncError, TimeoutError) as exc:
            log.warning("appservice %s: could not post the encryption notice in %s: %s",
                        self._service, room_id, exc)

    def _parse(self, txn_id: str, raws: list[Any]) -> list[RoomEvent]:
        events: list[RoomEvent] = []
        for raw in raws:
            room_id = raw.get("room_id") if isinstance(raw, dict) else None
            ev = parse_event(room_id, raw) if isinstance(room_id, str) else None
            if ev is None:
                self._warn_once("event", "appservice %s: skipping a malformed event in"
                                " transaction %s: %.200r", self._service, txn_id, raw)
                continue
            events.append(ev)
        return events
