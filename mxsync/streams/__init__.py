"""Sensor streams: devices publish readings into a room, dashboards subscribe.

What MQTT/Sparkplug users rely on, through Matrix:

- :class:`Publisher` (``client.publisher(room_id, device=...)``): readings of
  many sensors packed by the thousand into ``org.mxsync.readings`` events,
  persisted before they are sent (write-behind, then outbox), numbered per
  device (``session``, ``seq``), with an explicit overflow policy; sensor
  state with the last value (the retained message); birth, heartbeat and a
  server-side last will (MSC4140) in ``org.mxsync.device``.
- :class:`Subscriber` (``client.subscribe(room_id, sensors=None)``): live
  readings in order, ``latest``, ``history`` and ``window`` over the room's
  past, and device presence.

The wire format is ``mxsync.protocol.readings`` (docs/PROTOCOL.md section 3).
Modules, each owning its own state: ``publisher`` (the public send API and
its lifecycle), ``config`` (its checked settings), ``pump`` (buffer, encoder,
sealed and in-flight batches, write-behind), ``buffer`` (the pump's tables in
the client's store), ``sensors`` (declarations and last values), ``meta``
(sensor state updates), ``presence`` (birth and last will: the device's side), ``commands``
(commands to a device and their results), ``subscriber`` (the receive path),
``devices`` (device presence as a subscriber sees it), ``latest`` (sensor
metadata and last values as a subscriber knows them) and ``history`` (paging and buckets).
"""

from ..protocol.readings import Reading, SensorMeta
from .commands import Command
from .history import Bucket, HistoryProgress, aggregate
from .publisher import BufferFull, OverflowPolicy, Publisher, PublisherStatistics
from .subscriber import DeviceStatus, Subscriber, SubscriberStatistics

__all__ = [
    "Bucket",
    "Command",
    "BufferFull",
    "DeviceStatus",
    "HistoryProgress",
    "OverflowPolicy",
    "Publisher",
    "PublisherStatistics",
    "Reading",
    "SensorMeta",
    "Subscriber",
    "SubscriberStatistics",
    "aggregate",
]
