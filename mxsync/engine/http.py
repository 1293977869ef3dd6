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
the outbox and bounded-retry calls, and :class:`Liveness`, the client's one
"does the homeserver answer?" signal: every request reports its outcome to it,
and a loop backing off from an outage waits on it, so that it retries as soon as
the server is back instead of sleeping out a delay of up to 30 s.

Every request is logged at DEBUG (method, path, status, milliseconds) and, while
a :meth:`Http.recording` block is open, kept as a :class:`RequestRecord`: how a
test or a benchmark counts the round trips an operation makes.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode

import aiohttp
import anyio
from nio import AsyncClient

from ..errors import (
    ForbiddenError,
    HomeserverUnavailable,
    MatrixError,
    RateLimitedError,
    TransientError,
)
from ..protocol import api
from ..protocol.api import Request

__all__ = ["Http", "TransientError", "Backoff", "Liveness", "RequestRecord", "retrying"]

log = logging.getLogger("mxsync.http")
T = TypeVar("T")

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


class Liveness:
    """Whether the homeserver answers; one per client, shared by all its loops.

    Every request reports its outcome (:meth:`answered`, :meth:`unreachable`,
    :meth:`unsure`). A loop that backs off after a transient error sleeps with
    :meth:`wait` instead of ``anyio.sleep``: while the server is not known to
    answer, the waiters probe it together, and all of them wake as soon as a
    server that a probe found down answers again (a probe or any request).

    Invariants:
    - One probe at a time and at most one per ``0.75 * interval`` seconds per
      client, however many loops wait; a failed request counts as a probe (it
      postpones the next one), and nothing is probed while the server answers.
    - Only an answer after a failed *probe* wakes anyone. A server whose probe
      endpoint answers while another endpoint keeps failing (a broken /sync, a
      proxy that drops long polls) never does, so the ordinary backoff applies
      to it and a loop cannot be woken into a retry every ``interval``.
    - Every wait ends by its deadline, woken or not; a probe is cut after
      ``timeout`` seconds.
    - It never shortens a rate limit: callers wait ``retry_after_ms`` with a
      plain sleep, a 429 is an answer.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[bool]],
        *,
        interval: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("liveness needs interval > 0 and timeout > 0")
        self._probe = probe
        self.interval = interval
        self.timeout = timeout
        #: True: the last outcome was an answer; False: no answer; None: unknown (5xx).
        self.up: bool | None = None
        self._probe_failed = False  # a probe found it down since the last answer
        self._next_probe = 0.0  # monotonic time before which nobody probes
        # Created on first use: an Http may be built outside an event loop.
        self._back: anyio.Event | None = None
        self._lock: anyio.Lock | None = None
        #: Counters for statistics and tests.
        self.probes = 0
        self.recoveries = 0

    # -- outcomes ------------------------------------------------------------

    def answered(self) -> None:
        """The server answered (any status below 500, a 429 too)."""
        self.up = True
        if self._probe_failed:
            self._probe_failed = False
            self.recoveries += 1
            log.info("homeserver answers again; waking the loops that back off")
            if self._back is not None:
                self._back.set()
                self._back = None

    def unreachable(self) -> None:
        """A request got no answer (refused, reset, timed out)."""
        self.up = False
        self._postpone()

    def unsure(self) -> None:
        """A request got a 5xx: a proxy in front of a dead server, or one broken endpoint."""
        self.up = None
        self._postpone()

    def _postpone(self) -> None:
        # A failed request is as good as a probe: the next probe waits a full interval.
        self._next_probe = max(self._next_probe, time.monotonic() + self.interval)

    # -- waiting -------------------------------------------------------------

    async def wait(self, delay: float) -> bool:
        """Sleep ``delay`` seconds, less if the server is seen coming back; True if woken.

        Call it right after the failure it backs off from (no await in between),
        so that a recovery noticed by another loop meanwhile is not missed.
        """
        if self._back is None:
            self._back = anyio.Event()
        woken = self._back
        with anyio.move_on_after(delay):
            while not woken.is_set():
                pause = self._next_probe - time.monotonic()
                if self.up is True:
                    # Nothing to probe; look again later, a request may fail meanwhile.
                    pause = self.interval
                elif pause <= 0:
                    await self._probe_if_due()
                    continue
                with anyio.move_on_after(pause):
                    await woken.wait()
        return woken.is_set()

    async def _probe_if_due(self) -> None:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            # Another waiter may have probed while this one queued for the lock.
            if self.up is True or time.monotonic() < self._next_probe:
                return
            self.probes += 1
            ok = False
            try:
                with anyio.move_on_after(self.timeout):
                    ok = await self._probe()
            finally:
                # Jittered, so that a fleet that lost the server at the same moment
                # does not probe (and come back) in lockstep.
                self._next_probe = time.monotonic() + self.interval * random.uniform(0.75, 1.0)
            if ok:
                self.answered()
            else:
                self.up = False
                self._probe_failed = True


class RequestRecord(NamedTuple):
    """One request as :meth:`Http.recording` keeps it."""

    #: HTTP method, path and query parameters (the access token is never among them).
    method: str
    path: str
    query: dict[str, Any]
    #: ``time.perf_counter()`` when it was sent and when its answer (or failure) came.
    started: float
    ended: float
    #: HTTP status, or None when no answer came (network error, timeout).
    status: int | None


class Http:
    """Thin request layer over a nio ``AsyncClient``'s session."""

    def __init__(self, nio_client: AsyncClient, request_timeout: float = 60.0) -> None:
        self.nio = nio_client
        self.homeserver = nio_client.homeserver
        self.request_timeout = request_timeout
        self.access_token: str | None = None
        #: Requests made, for tests and statistics (counts retries and probes too).
        self.requests = 0
        #: Shared by the sync loop and the outbox: they wait on it while backing off.
        self.liveness = Liveness(self.probe)
        self._recorders: list[list[RequestRecord]] = []

    @contextmanager
    def recording(self) -> Iterator[list[RequestRecord]]:
        """``with http.recording() as records``: every request made by this client
        while the block is open (all its tasks), in the order they ended."""
        records: list[RequestRecord] = []
        self._recorders.append(records)
        try:
            yield records
        finally:
            self._recorders.remove(records)

    async def probe(self) -> bool:
        """Does the homeserver answer? One unauthenticated GET of the versions endpoint.

        Only a JSON object (or a definite Matrix error) counts as an answer; it
        does not report to :attr:`liveness` itself (:meth:`Liveness.wait` does).
        """
        # Unauthenticated, answered by Synapse from memory, so it costs the server
        # almost nothing and needs no valid session.
        try:
            doc = await self._request(api.versions(), http_timeout=self.liveness.timeout,
                                      report=False)
        except TransientError:
            return False
        except MatrixError:
            return True
        return isinstance(doc, dict)

    async def call(self, req: Request, *, http_timeout: float | None = None) -> dict[str, Any]:
        """Send ``req`` once (see :mod:`mxsync.protocol.api`); its answer must be a JSON object."""
        doc = await self._request(req, http_timeout=http_timeout)
        if not isinstance(doc, dict):
            raise TransientError(f"{req.method} {req.path}: expected a JSON object")
        return doc

    async def call_list(self, req: Request) -> list[Any]:
        """Like :meth:`call` for the few endpoints that answer a JSON list."""
        doc = await self._request(req)
        if not isinstance(doc, list):
            raise TransientError(f"{req.method} {req.path}: expected a JSON list")
        return doc

    async def _request(
        self, req: Request, *, http_timeout: float | None = None, report: bool = True
    ) -> Any:
        method, path, body = req.method, req.path, req.body
        # doseq: a list value is a repeated parameter (``server_name`` of a join).
        full = path if not req.query else f"{path}?{urlencode(req.query, doseq=True)}"
        headers = {"Content-Type": "application/json"}
        if req.auth and self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        data: bytes | str | None
        if body is None or isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body, separators=(",", ":"))
        self.requests += 1
        started = time.perf_counter()
        status: int | None = None
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
            if report:
                self.liveness.unreachable()
            raise TransientError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        finally:
            self._record(req, started, status)
        if report:
            if status >= 500:
                self.liveness.unsure()
            else:
                self.liveness.answered()
        return self._parse(method, path, status, raw)

    def _record(self, req: Request, started: float, status: int | None) -> None:
        if not self._recorders and not log.isEnabledFor(logging.DEBUG):
            return
        ended = time.perf_counter()
        log.debug("%s %s: %s in %.1f ms", req.method, req.path, status,
                  (ended - started) * 1000)
        record = RequestRecord(req.method, req.path, dict(req.query or {}), started, ended,
                               status)
        for records in self._recorders:
            records.append(record)

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
