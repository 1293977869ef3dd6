"""Logging in: the session (access token, device id) of one account, kept in the store.

:func:`log_in` finds the access token and device id a
:class:`~mxsync.engine.connection.Connection` runs with: the access token
given, else the session its store keeps, else a password login; the
Connection adopts what it returns and keeps it with :func:`save_session`
(key ``session`` in the store's ``session`` namespace).

Invariants:
- A store belongs to one account on one homeserver: a store that holds
  another's session is refused (ConfigError), never overwritten, as its
  outbox may hold that account's unsent events.
- A password given is checked by logging in with it (same device), never
  ignored in favour of a stored session it might not match; a stored token
  the server refuses falls back to the password, an access token given does not.
- The device id is kept across logins (the one asked for, else the stored
  one): transaction ids are scoped to the device, so the outbox's retries
  after a restart stay idempotent.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ..errors import ConfigError, LoginError, MatrixError
from ..protocol import api
from .http import Http
from .store import Store

__all__ = ["Session", "check_user_id", "log_in", "save_session"]

log = logging.getLogger("mxsync.client")

_SESSION_NS = "session"


class Session(msgspec.Struct):
    homeserver: str
    user_id: str
    device_id: str
    access_token: str


def check_user_id(user_id: str) -> None:
    if not (isinstance(user_id, str) and user_id.startswith("@") and ":" in user_id):
        raise ConfigError(f"user_id must look like @name:server, got {user_id!r}")


async def log_in(
    store: Store,
    http: Http,
    call: Callable[[api.Request], Awaitable[dict[str, Any]]],
    *,
    homeserver: str,
    user_id: str,
    password: str | None,
    access_token: str | None,
    device_id: str | None,
) -> Session:
    """The session to run with (see the module's invariants). ``call`` sends a
    request with the connection's retries; ``http.access_token`` is set as
    each attempt needs it."""
    saved_raw = await store.kv_get(_SESSION_NS, "session")
    saved = None
    if saved_raw is not None:
        try:
            saved = msgspec.json.decode(saved_raw, type=Session)
        except msgspec.DecodeError:
            log.warning("ignoring an unreadable session in the store")
        if saved is not None and (saved.user_id != user_id or saved.homeserver != homeserver):
            raise ConfigError(
                f"the store {store.path} belongs to {saved.user_id} on "
                f"{saved.homeserver}, not {user_id} on {homeserver}; give "
                "this user its own store (store_path; `mxsync --store`), or delete "
                "that file if its unsent events may go"
            )
    # A password given is checked by logging in with it (same device), never
    # ignored in favour of a stored session it might not match.
    stored = saved.access_token if saved and password is None else None
    token = access_token or stored
    if token is not None:
        http.access_token = token
        try:
            who = await call(api.whoami())
        except MatrixError as exc:
            if access_token is not None or password is None:
                raise LoginError(homeserver, user_id,
                                 f"access token refused ({exc.errcode})") from None
            log.info("stored session no longer valid; logging in again")
        else:
            if who.get("user_id") != user_id:
                raise LoginError(homeserver, user_id,
                                 f"the access token belongs to {who.get('user_id')!r}")
            device = who.get("device_id")
            return Session(homeserver, user_id, device if isinstance(device, str) else
                           (saved.device_id if saved else "UNKNOWN"), token)
    if password is None:
        raise LoginError(homeserver, user_id, "no password and no valid session")
    # Keep the device id across logins: transaction ids are scoped to the device,
    # so outbox retries after a restart stay idempotent.
    device_id = device_id or (saved.device_id if saved else None)
    device_id = device_id or f"MXSYNC{secrets.token_hex(5).upper()}"
    http.access_token = None
    try:
        answer = await call(api.login_password(user_id, password, device_id))
    except MatrixError as exc:
        raise LoginError(homeserver, user_id, f"{exc.errcode}: {exc.error}") from None
    token = answer.get("access_token")
    if not isinstance(token, str):
        raise LoginError(homeserver, user_id, "no access token in the answer")
    return Session(homeserver, user_id, str(answer.get("device_id") or device_id), token)


async def save_session(store: Store, session: Session) -> None:
    """Keep ``session`` in the store for the next run."""
    await store.kv_set(_SESSION_NS, "session", msgspec.json.encode(session))
