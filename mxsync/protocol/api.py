"""Every Matrix endpoint mxsync calls, as data: method, path, query, body.

Pure functions, no I/O (in the style of matrix-nio's ``nio/api.py``): URL
knowledge lives here and nowhere else. The engine's ``Http.call`` sends a
:class:`Request`; the sync loop, the outbox, the client and the features all
build theirs with these functions.

Conventions:
- Path segments (room ids, event ids, types, state keys, txn ids) are
  percent-encoded here, once.
- ``body`` is a JSON-able object, or ``bytes`` already encoded as JSON (the
  outbox stores contents encoded and sends them as they are).
- ``what`` names the call in errors and logs; it never holds a secret.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import quote

import msgspec

__all__ = [
    "as_appservice",
    "register_appservice_user",
    "appservice_ping",
    "Request",
    "Direction",
    "q",
    "CONTEXT_FILTER",
    "versions",
    "whoami",
    "login_password",
    "admin_register_nonce",
    "admin_register",
    "admin_override_ratelimit",
    "admin_reset_connection",
    "sync",
    "create_room",
    "join",
    "invite",
    "send_event",
    "send_to_device",
    "joined_members",
    "room_members",
    "room_alias",
    "put_state",
    "get_state",
    "room_state",
    "room_messages",
    "room_context",
    "timestamp_to_event",
    "delayed_events",
    "delayed_state",
    "delayed_event_action",
    "DELAYED_EVENTS",
]

Direction = Literal["b", "f"]

_V3 = "/_matrix/client/v3"
#: MSC4140 (delayed events), the unstable prefix Synapse serves.
DELAYED_EVENTS = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
_DELAY_PARAM = "org.matrix.msc4140.delay"

#: Filter for /context, which otherwise answers the whole room state at the
#: event too: none of it (a token and the event are all we ask it for).
CONTEXT_FILTER = json.dumps({"types": [], "lazy_load_members": True})


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """One HTTP request to the homeserver, before it is sent."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    query: dict[str, Any] | None = None
    body: Any = None
    #: Send the access token (everything but the versions probe and login).
    auth: bool = True
    #: A name for the call in errors and logs.
    what: str = ""


def q(part: str) -> str:
    """Percent-encode one path segment (room ids, event types, txn ids)."""
    return quote(part, safe="")


def _room(room_id: str) -> str:
    return f"{_V3}/rooms/{q(room_id)}"


def versions() -> Request:
    """Unauthenticated, answered from memory: the liveness probe."""
    return Request(method="GET", path="/_matrix/client/versions", auth=False, what="versions")


def whoami() -> Request:
    return Request(method="GET", path=f"{_V3}/account/whoami", what="whoami")


def login_password(user: str, password: str, device_id: str | None = None,
                   display_name: str = "mxsync") -> Request:
    """Log ``user`` (a user id or a localpart) in; keep ``device_id`` across logins."""
    body: dict[str, Any] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    if device_id is not None:
        body["device_id"] = device_id
        body["initial_device_display_name"] = display_name
    return Request(method="POST", path=f"{_V3}/login", body=body, auth=False, what="login")


# -- Synapse's admin API (the devserver and the tests) --------------------------

_ADMIN = "/_synapse/admin/v1"


def admin_register_nonce() -> Request:
    """A nonce for shared-secret registration."""
    return Request(method="GET", path=f"{_ADMIN}/register", auth=False, what="register nonce")


def admin_register(nonce: str, localpart: str, password: str, admin: bool, mac: str) -> Request:
    """Shared-secret registration (``mac`` over nonce, user, password, admin flag)."""
    body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin,
            "mac": mac}
    return Request(method="POST", path=f"{_ADMIN}/register", body=body, auth=False,
                   what="register")


def admin_override_ratelimit(user_id: str, messages_per_second: int, burst_count: int) -> Request:
    """Set one user's message rate limit (0/0: unlimited); needs an admin's token."""
    return Request(method="POST", path=f"{_ADMIN}/users/{q(user_id)}/override_ratelimit",
                   body={"messages_per_second": messages_per_second, "burst_count": burst_count},
                   what="override ratelimit")


def admin_reset_connection(destination: str) -> Request:
    """Clear the federation backoff towards ``destination`` and wake its queue."""
    return Request(method="POST",
                   path=f"{_ADMIN}/federation/destinations/{q(destination)}/reset_connection",
                   body={}, what="reset federation connection")


def sync(filter_json: str, since: str | None, timeout_ms: int) -> Request:
    query: dict[str, Any] = {"filter": filter_json, "timeout": timeout_ms}
    if since is not None:
        query["since"] = since
    return Request(method="GET", path=f"{_V3}/sync", query=query, what="sync")


def create_room(body: dict[str, Any]) -> Request:
    return Request(method="POST", path=f"{_V3}/createRoom", body=body, what="create_room")


def join(room_id_or_alias: str, via: Iterable[str] = ()) -> Request:
    """Join by id or alias; ``via``: servers to join through (a room id alone
    cannot be joined over federation without an invite), as ``server_name``
    query parameters (one each, repeated)."""
    servers = list(via)
    query = {"server_name": servers} if servers else None
    return Request(method="POST", path=f"{_V3}/join/{q(room_id_or_alias)}", query=query,
                   body={}, what="join")


def register_appservice_user(localpart: str) -> Request:
    """Register a user of an application service's namespace (with the as_token)."""
    # inhibit_login: the gateway speaks for its users with its own token; a device
    # and an access token per user would only cost the homeserver work.
    return Request(method="POST", path=f"{_V3}/register",
                   body={"type": "m.login.application_service", "username": localpart,
                         "inhibit_login": True},
                   what="register_appservice_user")


def appservice_ping(appservice_id: str, txn_id: str | None = None) -> Request:
    """Ask the homeserver to call the application service's ``/_matrix/app/v1/ping``
    (with the as_token); Synapse then retries at once the transactions it
    holds for a service it found down, instead of waiting out its backoff."""
    body = {} if txn_id is None else {"transaction_id": txn_id}
    return Request(method="POST", path=f"/_matrix/client/v1/appservice/{q(appservice_id)}/ping",
                   body=body, what="appservice_ping")


def invite(room_id: str, user_id: str) -> Request:
    return Request(method="POST", path=f"{_room(room_id)}/invite", body={"user_id": user_id},
                   what="invite")


def send_event(room_id: str, event_type: str, txn_id: str, content: Any) -> Request:
    """PUT /send: idempotent per access token and ``txn_id``."""
    return Request(method="PUT", path=f"{_room(room_id)}/send/{q(event_type)}/{q(txn_id)}",
                   body=content, what="send")


def send_to_device(event_type: str, txn_id: str,
                   messages: dict[str, dict[str, Any]]) -> Request:
    """PUT /sendToDevice: ``messages`` is ``{user_id: {device_id or "*": content}}``;
    idempotent per access token and ``txn_id`` like /send."""
    return Request(method="PUT", path=f"{_V3}/sendToDevice/{q(event_type)}/{q(txn_id)}",
                   body={"messages": messages}, what="send to device")


def joined_members(room_id: str) -> Request:
    """The room's joined members: ``{"joined": {user_id: {...}}}``."""
    return Request(method="GET", path=f"{_room(room_id)}/joined_members",
                   what="joined members")


def room_members(room_id: str) -> Request:
    """The room's members other than those who left: ``{"chunk": [m.room.member, ...]}``
    (joined and invited; a user let in but not yet joined counts)."""
    return Request(method="GET", path=f"{_room(room_id)}/members",
                   query={"not_membership": "leave"}, what="room members")


def room_alias(alias: str) -> Request:
    """Resolve a room alias: ``{"room_id": ..., "servers": [...]}`` or M_NOT_FOUND."""
    return Request(method="GET", path=f"{_V3}/directory/room/{q(alias)}", what="room alias")


def put_state(room_id: str, event_type: str, state_key: str, content: Any) -> Request:
    """PUT /state: no txn id, but the same content again yields the same state."""
    return Request(method="PUT", path=f"{_room(room_id)}/state/{q(event_type)}/{q(state_key)}",
                   body=content, what="state")


def get_state(room_id: str, event_type: str, state_key: str = "") -> Request:
    """GET one state event's content, fresh from the homeserver (404 if none)."""
    return Request(method="GET", path=f"{_room(room_id)}/state/{q(event_type)}/{q(state_key)}",
                   what="state event")


def room_state(room_id: str) -> Request:
    """The room's current state: answers a JSON *list* of events."""
    return Request(method="GET", path=f"{_room(room_id)}/state", what="room state")


def room_messages(
    room_id: str,
    from_token: str | None,
    direction: Direction,
    limit: int,
    *,
    types: Iterable[str] | None = None,
    filter_json: str | None = None,
    to: str | None = None,
) -> Request:
    """One page of /messages (``limit`` is clamped to 1..1000, the server's range)."""
    if direction not in ("b", "f"):
        raise ValueError(f"direction must be 'b' or 'f', got {direction!r}")
    query: dict[str, Any] = {"dir": direction, "limit": max(1, min(limit, 1000))}
    if from_token is not None:
        query["from"] = from_token
    if to is not None:
        query["to"] = to
    if filter_json is not None:
        query["filter"] = filter_json
    elif types is not None:
        query["filter"] = json.dumps({"types": list(types)}, separators=(",", ":"))
    return Request(method="GET", path=f"{_room(room_id)}/messages", query=query,
                   what="messages")


def room_context(room_id: str, event_id: str) -> Request:
    """The event and tokens around it, without the room state at it."""
    return Request(method="GET", path=f"{_room(room_id)}/context/{q(event_id)}",
                   query={"limit": 0, "filter": CONTEXT_FILTER}, what="context")


def timestamp_to_event(room_id: str, ts_ms: int, direction: Direction) -> Request:
    return Request(method="GET", path=f"/_matrix/client/v1/rooms/{q(room_id)}/timestamp_to_event",
                   query={"ts": ts_ms, "dir": direction}, what="timestamp_to_event")


def delayed_events() -> Request:
    """List this user's delayed events (MSC4140); also tells whether it is served."""
    return Request(method="GET", path=DELAYED_EVENTS, what="delayed events")


def delayed_state(room_id: str, event_type: str, state_key: str, content: Any,
                  delay_ms: int) -> Request:
    """A state event the server sends after ``delay_ms`` unless restarted (a last will)."""
    req = put_state(room_id, event_type, state_key, content)
    return msgspec.structs.replace(req, query={_DELAY_PARAM: delay_ms}, what="delayed state")


def delayed_event_action(delay_id: str, action: Literal["send", "cancel", "restart"]) -> Request:
    return Request(method="POST", path=f"{DELAYED_EVENTS}/{q(delay_id)}",
                   body={"action": action}, what=f"delayed event {action}")


def as_appservice(req: Request, user_id: str | None, ts_ms: int | None = None) -> Request:
    """``req`` sent by an application service as ``user_id`` of its namespace
    (``?user_id=``), with the event's timestamp ``ts_ms`` (``?ts=``) if given."""
    if user_id is None and ts_ms is None:
        return req
    query = dict(req.query or {})
    if user_id is not None:
        query["user_id"] = user_id
    if ts_ms is not None:
        query["ts"] = ts_ms
    return msgspec.structs.replace(req, query=query)
