"""A device's birth, heartbeat and last will: its ``org.mxsync.device`` state.

This is the sending side, run by a Publisher; how a subscriber reads those
states (online/offline, offline inferred from missed heartbeats) is
:mod:`mxsync.streams.devices`.

Two modes, chosen once per run:

- ``"will"`` (the homeserver serves MSC4140 delayed events, unstable prefix
  ``org.matrix.msc4140``): after the birth (``online: true``, no heartbeat
  promised) the device schedules a delayed ``online: false`` /
  ``reason: "last-will"`` update of its own state and restarts that timer
  every ``offline_after / 3`` seconds. Restarts go through Synapse's cheap
  delayed-event management limiter, not the message limiter. If the device
  dies, the homeserver itself marks it offline ``offline_after`` seconds
  after the last restart.
- The period runs from the last restart the homeserver *answered*: a restart
  that failed (network, 5xx, a rate limit, a slow server) is retried within
  seconds, with bounded backoff, not one period later, so one failure never
  costs the will. The first restart of a run falls at a random point of the
  first period, so that devices started together (a gateway's fleet) do not
  restart in lockstep.
- ``"heartbeat"`` (no delayed events): the birth promises ``heartbeat_ms``
  and the device refreshes its state whenever no batch of it was stored for
  most of that interval; subscribers infer "offline" after two missed intervals.

Invariants:
- A clean shutdown sends ``online: false`` / ``reason: "shutdown"`` first and
  cancels the will afterwards, so a failure between the two leaves the device
  offline (twice), never online.
- A will left by a previous run of the same device (``kill -9``) is cancelled
  before the new birth, so it cannot mark the new run offline.
- A shutdown keeps the will restarted until its goodbye is stored, then
  cancels every pending will of the device, not only the one this run armed:
  a run closed before its presence had looked would otherwise leave a previous
  run's will to fire later with ``reason: "last-will"``, and a goodbye queued
  for longer than ``offline_after`` (a thousand publishers closing at once)
  would let the will fire between the goodbye and its cancel.
- A will that fired while the device was alive (a network partition longer
  than ``offline_after``) is noticed on the next restart (M_NOT_FOUND) and
  answered with a new birth and a new will.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
from anyio.abc import TaskStatus

from ..engine.http import Backoff
from ..engine.outbox import SendHandle
from ..engine.surface import Engine
from ..errors import HomeserverUnavailable, MatrixError, RateLimitedError, TransientError
from ..protocol import api
from ..protocol.readings import DeviceState, to_content
from ..protocol.types import DEVICE

__all__ = ["Presence", "PresenceMode"]

log = logging.getLogger("mxsync.streams.presence")

PresenceMode = Literal["will", "heartbeat"]



def _now_ms() -> int:
    return int(time.time() * 1000)


class Presence:
    """Announces one device in one room and keeps its last will armed."""

    def __init__(
        self,
        client: Engine,
        room_id: str,
        device: str,
        *,
        session: int,
        description: str | None,
        last_will: bool,
        offline_after: float,
        heartbeat: float,
        last_activity: Callable[[], float],
        last_seq: Callable[[], int | None],
    ) -> None:
        self._client = client
        self._room = room_id
        self._device = device
        self._session = session
        self._description = description
        self._want_will = last_will
        self._offline_after_ms = int(offline_after * 1000)
        self._heartbeat = heartbeat
        self._last_activity = last_activity
        self._last_seq = last_seq
        self._lane = f"device/{device}"
        self._delay_id: str | None = None
        self._last_refresh = time.monotonic()
        #: The will's restart period (s).
        self._period = max(1.0, self._offline_after_ms / 3000)
        #: "will" or "heartbeat" once known.
        self.mode: PresenceMode | None = None
        #: Set once the birth is stored on the homeserver (and the will armed).
        self.ready = anyio.Event()
        self.restarts = 0
        #: Restarts that failed and were retried.
        self.restart_failures = 0
        #: Wills that fired while the device lived (answered by a new birth).
        self.rebirths = 0

    @property
    def will_armed(self) -> bool:
        return self._delay_id is not None

    # -- running ----------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Announce the device, then keep it alive until cancelled."""
        task_status.started()
        await self._announce()
        self.ready.set()
        period = self._period
        wait = random.uniform(period / 2, period)
        retry = Backoff(base=2.0, cap=max(2.0, period / 2))
        while True:
            if self.mode == "will":
                await anyio.sleep(wait)
                if await self._restart():
                    retry.reset()
                    wait = period
                else:
                    wait = retry.next_delay()
            else:
                await anyio.sleep(min(1.0, self._heartbeat / 4))
                await self._maybe_refresh()

    async def _until_done(self, step: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        while True:
            try:
                await step()
                return
            except RateLimitedError as exc:
                await anyio.sleep((exc.retry_after_ms or 1000) / 1000)
            except (TransientError, HomeserverUnavailable) as exc:
                delay = backoff.next_delay()
                log.debug("announcing %s failed (%s); retry in %.1fs", self._device, exc, delay)
                await anyio.sleep(delay)

    async def _detect(self) -> None:
        if self.mode is None:
            self.mode = "will" if self._want_will and await self._will_supported() else "heartbeat"

    async def _announce(self) -> None:
        """Birth (through the outbox: enqueued once), then the will (retried)."""
        await self._until_done(self._detect)
        handle = await self._client.send(
            self._room, DEVICE, self._state(online=True, reason="birth"),
            state_key=self._device, lane=self._lane,
        )
        if self.mode == "will":
            await self._until_done(self._arm)
        try:
            await self._wait_birth(handle)
        except MatrixError as exc:
            log.error("the homeserver refused the birth of device %s in %s: %s",
                      self._device, self._room, exc)
        self._last_refresh = time.monotonic()

    async def _wait_birth(self, handle: SendHandle) -> None:
        """Wait until the birth is stored, restarting the armed will meanwhile: a
        birth queued behind a busy outbox (a gateway's thousand births) must not
        let the will, armed before it, fire."""
        await self._wait_keeping_will(handle, rearm=True)

    async def _wait_keeping_will(self, handle: SendHandle, *, rearm: bool) -> None:
        """Wait for ``handle``, restarting the will every period meanwhile;
        ``rearm``: arm a new will if the homeserver says it fired."""
        while True:
            with anyio.move_on_after(self._period):
                await handle.wait()
                return
            if self.mode == "will" and self._delay_id is not None:
                try:
                    await self._client.request(
                        api.delayed_event_action(self._delay_id, "restart"))
                    self.restarts += 1
                except MatrixError as exc:
                    if exc.errcode != "M_NOT_FOUND":
                        log.debug("restarting the will of %s failed: %s", self._device, exc)
                        continue
                    self._delay_id = None
                    if rearm:
                        self.rebirths += 1
                        await self._until_done(self._arm)
                except (TransientError, HomeserverUnavailable) as exc:
                    log.debug("restarting the will of %s failed: %s", self._device, exc)

    def _state(self, *, online: bool, reason: str) -> dict[str, object]:
        will = self.mode == "will"
        return to_content(
            DeviceState(
                online=online,
                since_ms=_now_ms(),
                heartbeat_ms=0 if (will or not online) else int(self._heartbeat * 1000),
                session=self._session,
                last_seq=self._last_seq() if reason == "shutdown" else None,
                reason=reason,
                description=self._description,  # kept while offline too
            )
        )

    # -- last will (MSC4140) ------------------------------------------------

    async def _will_supported(self) -> bool:
        """Probe the delayed-events API and cancel wills a previous run left behind."""
        try:
            answer = await self._client.request(api.delayed_events())
        except MatrixError as exc:
            if isinstance(exc, RateLimitedError):
                raise
            log.info("no delayed events on this homeserver (%s); using heartbeats", exc.errcode)
            return False
        await self._cancel_foreign(answer)
        return True

    async def _cancel_foreign(self, answer: dict[str, Any]) -> None:
        """Cancel this device's wills in ``answer`` (a delayed-events listing) other
        than the one this run holds armed (every one after shutdown)."""
        pending = answer.get("delayed_events")
        for ev in pending if isinstance(pending, list) else []:
            if (
                isinstance(ev, dict)
                and ev.get("room_id") == self._room
                and ev.get("type") == DEVICE
                and ev.get("state_key") == self._device
                and isinstance(ev.get("delay_id"), str)
                and ev["delay_id"] != self._delay_id
            ):
                log.info("cancelling a last will of %s", self._device)
                await self._manage(ev["delay_id"], "cancel")

    async def _arm(self) -> None:
        will = self._state(online=False, reason="last-will")
        try:
            answer = await self._client.request(api.delayed_state(
                self._room, DEVICE, self._device, will, self._offline_after_ms))
        except MatrixError as exc:
            if isinstance(exc, RateLimitedError):
                raise
            log.warning("the homeserver refused a last will (%s: %s); using heartbeats",
                        exc.errcode, exc.error)
            await self._fall_back()
            return
        delay_id = answer.get("delay_id")
        if not isinstance(delay_id, str):
            # A homeserver that ignores the delay parameter sent the will at once.
            log.warning("the homeserver ignored the delay of the last will; using heartbeats")
            await self._fall_back()
            return
        self._delay_id = delay_id

    async def _fall_back(self) -> None:
        self.mode = "heartbeat"
        self._delay_id = None
        await self._client.send(
            self._room, DEVICE, self._state(online=True, reason="birth"),
            state_key=self._device, lane=self._lane,
        )

    async def _manage(self, delay_id: str, action: Literal["send", "cancel", "restart"]) -> None:
        try:
            await self._client.request(api.delayed_event_action(delay_id, action))
        except MatrixError as exc:
            if exc.errcode != "M_NOT_FOUND":
                raise

    async def _restart(self) -> bool:
        """Restart the will's timer; False if it should be tried again soon."""
        if self._delay_id is None:
            await self._announce()
            return True
        try:
            await self._client.request(api.delayed_event_action(self._delay_id, "restart"))
            self.restarts += 1
            return True
        except RateLimitedError as exc:
            await anyio.sleep((exc.retry_after_ms or 1000) / 1000)
            return False
        except (TransientError, HomeserverUnavailable) as exc:
            # Keep trying; if the homeserver stays unreachable past the delay, the
            # will fires, which is the truth: the device is unreachable.
            self.restart_failures += 1
            log.debug("restarting the last will of %s failed: %s", self._device, exc)
            return False
        except MatrixError as exc:
            if exc.errcode != "M_NOT_FOUND":
                self.restart_failures += 1
                log.warning("restarting the last will of %s failed: %s", self._device, exc)
                return False
            log.warning("the last will of %s fired while it was alive; announcing it again",
                        self._device)
            self._delay_id = None
            self.rebirths += 1
            await self._announce()
            return True

    async def rebirth(self) -> None:
        """Announce the device again (``reason: "rebirth"``), as asked by a rebirth command."""
        handle = await self._client.send(
            self._room, DEVICE, self._state(online=True, reason="rebirth"),
            state_key=self._device, lane=self._lane,
        )
        self._last_refresh = time.monotonic()
        try:
            await handle.wait()
        except MatrixError as exc:
            log.warning("the homeserver refused the rebirth of %s: %s", self._device, exc)

    # -- heartbeat ---------------------------------------------------------------

    async def _maybe_refresh(self) -> None:
        idle = time.monotonic() - max(self._last_refresh, self._last_activity())
        if idle < self._heartbeat * 0.8:
            return
        handle = await self._client.send(
            self._room, DEVICE, self._state(online=True, reason="heartbeat"),
            state_key=self._device, lane=self._lane,
        )
        self._last_refresh = time.monotonic()
        try:
            await handle.wait()
        except MatrixError as exc:
            log.warning("heartbeat of %s refused: %s", self._device, exc)

    # -- shutdown ---------------------------------------------------------------

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Mark the device offline (``reason``: "shutdown", or "last-will" for a
        bridge relaying a device's death) and cancel its will. Call once the
        :meth:`run` task is stopped."""
        handle = await self._client.send(
            self._room, DEVICE, self._state(online=False, reason=reason),
            state_key=self._device, lane=self._lane,
        )
        try:
            # A thousand publishers closing at once queue their goodbyes for
            # minutes: the will must not fire meanwhile, after the goodbye is
            # stored and before it is cancelled (the soak saw 18% do so).
            if self.mode == "will" and self._delay_id is not None:
                try:
                    await self._client.request(
                        api.delayed_event_action(self._delay_id, "restart"))
                except (MatrixError, TransientError, HomeserverUnavailable) as exc:
                    log.debug("restarting the will of %s failed: %s", self._device, exc)
            await self._wait_keeping_will(handle, rearm=False)
        except MatrixError as exc:
            log.warning("the homeserver refused the shutdown state of %s: %s", self._device, exc)
        if self.mode == "heartbeat":
            return
        own, self._delay_id = self._delay_id, None
        try:
            answer = await self._client.request(api.delayed_events())
        except (MatrixError, TransientError, HomeserverUnavailable) as exc:
            answer = {"delayed_events": []} if own is None else {"delayed_events": [
                {"room_id": self._room, "type": DEVICE, "state_key": self._device,
                 "delay_id": own}]}
            log.debug("listing the wills of %s failed (%s)", self._device, exc)
        try:
            await self._cancel_foreign(answer)
        except (MatrixError, TransientError, HomeserverUnavailable) as exc:
            log.warning("could not cancel the last will of %s (%s); it will fire later",
                        self._device, exc)
