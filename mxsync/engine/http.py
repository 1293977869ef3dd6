"""One place where HTTP requests to the homeserver are made and answers parsed.

It rides on the aiohttp session of the client's matrix-nio ``AsyncClient``
(``AsyncClient.send``), but sends the access token in an ``Authorization``
header (nio puts it in the query string, where it ends up in logs) and maps
every outcome to one of three things:

- a parsed JSON object (2xx);
- a :class:`~mxsync.errors.MatrixError` subclass (a definite answer: 4xx with
  an errcode; ``RateLimitedError`` carries ``retry_after_ms``);
- a :class:`TransientError` (network error, timeout, 5xx, garbage body):
  worth retrying with backoff.

It also holds :class:`Backoff`, the one backoff policy used by the sync loop,
the outbox and bounded-retry calls.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
import anyio
from nio import AsyncClient

from ..errors import (
    ForbiddenError,
    HomeserverUnavailable,
    MatrixError,
    MxsyncError,
    RateLimitedError,
)

__all__ = ["Http", "TransientError", "Backoff", "q", "retrying"]

log = logging.getLogger("mxsync.http")
T = TypeVar("T")


def q(part: str) -> str:
    """Percent-encode one path segment (room ids, event types, txn ids)."""
    return quote(part, safe="")


class TransientError(MxsyncError):
    """A failure worth retrying: network error, timeout, 5xx, unparsable answer."""


class Backoff:
    """Exponential backoff with full jitter, bounded by ``cap`` seconds.

    The first delay is drawn from [base/2, base]; never zero, so a loop driven
    by it can never spin.
    """

    def __init__(self, base: float = 0.5, cap: float = 30.0, factor: float = 2.0) -> None:
        if base <= 0 or cap < base or factor < 1:
            raise ValueError("backoff needs 0 < base <= cap and factor >= 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * self.factor**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class Http:
    """Thin request layer over a nio ``AsyncClient``'s session."""

    def __init__(self, nio_client: AsyncClient, request_timeout: float = 60.0) -> None:
        self.nio = nio_client
        self.homeserver = nio_client.homeserver
        self.request_timeout = request_timeout
        self.access_token: str | None = None
        #: Requests made, for tests and statistics (counts retries too).
        self.requests = 0

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, Any] | None = None,
        http_timeout: float | None = None,
        auth: bool = True,
    ) -> dict[str, Any]:
        """Make one request; ``path`` starts with ``/_matrix/...`` or ``/_synapse/...``.

        ``body`` is JSON-encoded unless it is already ``bytes``.
        """
        doc = await self._request(
            method, path, body, query=query, http_timeout=http_timeout, auth=auth
        )
        if not isinstance(doc, dict):
            raise TransientError(f"{method} {path}: expected a JSON object")
        return doc

    async def request_list(self, method: str, path: str) -> list[Any]:
        """Like :meth:`request` for the few endpoints that answer a JSON list."""
        doc = await self._request(method, path, None)
        if not isinstance(doc, list):
            raise TransientError(f"{method} {path}: expected a JSON list")
        return doc

    async def _request(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        query: Mapping[str, Any] | None = None,
        http_timeout: float | None = None,
        auth: bool = True,
    ) -> Any:
        full = path if not query else f"{path}?{urlencode(query)}"
        headers = {"Content-Type": "application/json"}
        if auth and self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        data: bytes | str | None
        if body is None or isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body, separators=(",", ":"))
        self.requests += 1
        try:
            resp = await self.nio.send(
                method,
                full,
                data,
                headers,
                timeout=self.request_timeout if http_timeout is None else http_timeout,
            )
            async with resp:
                status = resp.status
                raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransientError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return self._parse(method, path, status, raw)

    @staticmethod
    def _parse(method: str, path: str, status: int, raw: bytes) -> Any:
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = None
        if status >= 500 or (doc is None and status < 400) or status == 0:
            raise TransientError(f"{method} {path}: HTTP {status} with an unusable body")
        if status < 300:
            return doc
        if not isinstance(doc, dict):
            doc = {}
        errcode = str(doc.get("errcode", f"HTTP_{status}"))
        error = str(doc.get("error", ""))
        if status == 429 or errcode == "M_LIMIT_EXCEEDED":
            retry = doc.get("retry_after_ms")
            raise RateLimitedError(
                status,
                errcode,
                error,
                method=method,
                path=path,
                retry_after_ms=int(retry) if isinstance(retry, int) else None,
            )
        if status == 403 or errcode == "M_FORBIDDEN":
            raise ForbiddenError(status, errcode, error, method=method, path=path)
        raise MatrixError(status, errcode, error, method=method, path=path)


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    homeserver: str,
    attempts: int = 5,
    backoff: Backoff | None = None,
    what: str = "request",
) -> T:
    """Call ``fn`` until it succeeds, retrying transient errors and rate limits.

    After ``attempts`` transient failures it raises
    :class:`~mxsync.errors.HomeserverUnavailable`; a definite Matrix error
    (other than a rate limit) is raised at once.
    """
    backoff = backoff or Backoff()
    last = ""
    failures = 0
    rate_limited = 0
    while True:
        try:
            return await fn()
        except RateLimitedError as exc:
            # A rate limit is a definite answer from a live server: wait as told.
            # Bounded too, so a call that waits for an answer cannot wait forever.
            rate_limited += 1
            if rate_limited > 100:
                raise
            await anyio.sleep(max(0.05, (exc.retry_after_ms or 1000) / 1000))
        except TransientError as exc:
            last = str(exc)
            failures += 1
            if failures >= attempts:
                raise HomeserverUnavailable(
                    homeserver, f"{what}: {last} ({attempts} attempts)"
                ) from None
            delay = backoff.next_delay()
            log.debug("%s failed (%s); retrying in %.1fs", what, last, delay)
            await anyio.sleep(delay)
