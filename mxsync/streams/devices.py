"""Device presence as a subscriber sees it: the receiving side.

:class:`DeviceTracker` owns what one :class:`~mxsync.streams.subscriber.Subscriber`
knows of the room's devices: each device's :class:`DeviceStatus`, the time of
the state event it came from, when the device was last heard of (a batch or
a refresh), the watchers of ``device_changes()`` and the heartbeat check. The
Subscriber feeds it (device states, batches) and delegates ``devices``,
``wait_device`` and ``device_changes`` to it.

The sending side, a device's birth, heartbeats and MSC4140 last will in its
``org.mxsync.device`` state, is :mod:`mxsync.streams.presence`, run by the
Publisher.

Invariants:
- A device is offline when its state says so (shutdown, last will) or, for a
  device that promised heartbeats, when neither a refresh nor a batch of it
  arrived for twice ``heartbeat_ms`` (``inferred=True``, reason
  "heartbeat-timeout"); a batch or refresh brings it back.
- A state older (by server time) than the one already taken is ignored: the
  state fetch at the start may race the sync loop.
- Watchers hear of changes only (online/offline, a new session), never of a
  refresh of the same state; a watcher whose queue is full misses the change
  (counted in ``lost_changes``), it never slows the subscriber down.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..engine.events import RoomEvent
from ..engine.fanout import registered
from ..protocol.readings import DeviceState

__all__ = ["DeviceStatus", "DeviceTracker"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class DeviceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What a subscriber knows about a device.

    ``since_ms`` is the device's own time of the change; ``event_ts`` the
    homeserver's time of the event that said so (for a last will: when the
    homeserver sent it), or the subscriber's clock for an inferred change.
    """

    device: str
    sender: str
    online: bool
    since_ms: int
    event_ts: int
    reason: str | None = None
    heartbeat_ms: int = 0
    session: int | None = None
    last_seq: int | None = None
    description: str | None = None
    #: True when the subscriber inferred the state (missed heartbeats).
    inferred: bool = False


class DeviceTracker:
    """The devices of one room as a subscriber sees them (see the module docstring)."""

    def __init__(self, check_interval: float) -> None:
        #: Seconds between two looks for missed heartbeats.
        self.check_interval = check_interval
        #: Device status changes a watcher missed because its queue was full.
        self.lost_changes = 0
        self._devices: dict[str, DeviceStatus] = {}
        self._state_ts: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._watchers: list[MemoryObjectSendStream[DeviceStatus]] = []
        self._changed = anyio.Event()

    def snapshot(self) -> dict[str, DeviceStatus]:
        """The devices by device id, as known now (a copy)."""
        return dict(self._devices)

    # -- fed by the subscriber -----------------------------------------------------

    def apply_state(self, ev: RoomEvent, state: DeviceState, *, seen_ms: int) -> None:
        """A device state event (judged already) of the device ``ev.state_key``."""
        assert ev.state_key is not None
        device = ev.state_key
        if ev.origin_server_ts < self._state_ts.get(device, -1):
            return  # older than what we know (the state fetch raced the sync)
        self._state_ts[device] = ev.origin_server_ts
        if state.online:
            self._seen[device] = max(self._seen.get(device, 0), seen_ms)
        # An offline state says no description: the device is still what it was.
        old_status = self._devices.get(device)
        description = state.description if state.description is not None else (
            old_status.description if old_status is not None else None)
        self._set(DeviceStatus(
            device=device, sender=ev.sender, online=state.online, since_ms=state.since_ms,
            event_ts=ev.origin_server_ts, reason=state.reason, heartbeat_ms=state.heartbeat_ms,
            session=state.session, last_seq=state.last_seq, description=description,
        ))

    def alive(self, device: str, sender: str) -> None:
        """A batch of ``device`` from ``sender`` arrived: it is heard of now."""
        now = _now_ms()
        self._seen[device] = now
        st = self._devices.get(device)
        if st is not None and not st.online and st.inferred and st.sender == sender:
            self._set(msgspec.structs.replace(
                st, online=True, since_ms=now, event_ts=now, reason="batch", inferred=True
            ))

    async def watch_heartbeats(self) -> None:
        """Mark offline the devices whose heartbeats stopped; runs until cancelled."""
        while True:
            await anyio.sleep(self.check_interval)
            now = _now_ms()
            for device, st in list(self._devices.items()):
                if not st.online or st.heartbeat_ms <= 0:
                    continue
                seen = self._seen.get(device, st.event_ts)
                if now - seen > 2 * st.heartbeat_ms:
                    self._set(msgspec.structs.replace(
                        st, online=False, since_ms=now, event_ts=now,
                        reason="heartbeat-timeout", inferred=True,
                    ))

    def close(self) -> None:
        """End every watcher's stream (the subscriber is closing)."""
        for w in self._watchers:
            w.close()

    def _set(self, status: DeviceStatus) -> None:
        old = self._devices.get(status.device)
        self._devices[status.device] = status
        if old is not None and (old.online, old.session) == (status.online, status.session):
            return  # a refresh, or a second word for the same state: not a change
        for w in list(self._watchers):
            try:
                w.send_nowait(status)
            except anyio.WouldBlock:
                self.lost_changes += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._watchers.remove(w)
        self._changed.set()
        self._changed = anyio.Event()

    # -- asked by the application (through the subscriber) -------------------------

    async def wait(self, device: str, *, online: bool) -> DeviceStatus:
        """Return the device's status once it is ``online`` (or offline)."""
        while True:
            st = self._devices.get(device)
            if st is not None and st.online is online:
                return st
            await self._changed.wait()

    def changes(self, buffer: int = 256) -> AbstractAsyncContextManager[
        MemoryObjectReceiveStream[DeviceStatus]
    ]:
        """A stream of device status changes (online/offline, new sessions) from now on."""
        return registered(self._watchers, _watcher, buffer)


def _watcher(send: MemoryObjectSendStream[DeviceStatus]) -> MemoryObjectSendStream[DeviceStatus]:
    return send  # a watcher is its stream
