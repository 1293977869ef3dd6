"""Sensor state updates (``org.mxsync.sensor``, the retained last value) of one publisher.

It owns the sending side of sensor state: the handle of the update in flight,
when the last one went out, and how many did. What is due comes from
:class:`~mxsync.streams.sensors.Sensors`; what the homeserver already stores
comes from the pump's ``settled_below`` mark.

Invariants:
- An update reports only readings the homeserver already stores, at most every
  ``meta_interval`` per sensor, and one at a time.
- It waits while sealed batches queue (readings come first; under a backlog
  one update goes out every ``12 * meta_interval``).
- State events are never encrypted: in an encrypted room no update is sent
  unless the publisher asked for it (``last_values=True``), so the last values
  stay inside the encrypted batches.
"""

from __future__ import annotations

import logging
import time

import anyio

from ..engine.outbox import SendHandle
from ..engine.surface import Engine
from ..errors import MatrixError
from ..protocol.types import SENSOR
from .config import PublisherConfig
from .pump import Pump
from .sensors import Sensors

__all__ = ["SensorState"]

log = logging.getLogger("mxsync.streams.publisher")


class SensorState:
    """Sends the sensor state updates of one publisher."""

    def __init__(
        self, client: Engine, config: PublisherConfig, sensors: Sensors, pump: Pump
    ) -> None:
        self._client = client
        self._cfg = config
        self._sensors = sensors
        self._pump = pump
        self._handle: SendHandle | None = None
        self._last = time.monotonic()
        #: Updates handed to the outbox.
        self.sent = 0
        #: Send updates at all (set by the publisher once it knows the room).
        self.enabled = config.last_values is not False

    async def run(self) -> None:
        tick = min(1.0, max(0.05, self._cfg.meta_interval / 4))
        while True:
            await anyio.sleep(tick)
            await self.send(final=False)

    async def send(self, *, final: bool) -> None:
        """One sensor state update (all due ones when ``final``)."""
        if not self.enabled:
            return
        if self._handle is not None and not self._handle.done and not final:
            return
        interval = self._cfg.meta_interval
        now = time.monotonic()
        if self._pump.sealed_pending and not final and now - self._last < interval * 12:
            return  # readings first, but a long backlog does not freeze the last values
        handles = []
        for sensor, content in self._sensors.updates(
            now, interval, self._pump.settled_below(), final=final
        ):
            handle = await self._client.send(
                self._cfg.room_id, SENSOR, content, state_key=sensor,
                lane=f"meta/{self._cfg.device}",
            )
            self._handle = handle
            self.sent += 1
            self._last = now
            handles.append(handle)
        for handle in handles if final else ():
            try:
                await handle.wait()
            except MatrixError as exc:
                log.warning("publisher %s: sensor state refused: %s", self._cfg.device, exc)
