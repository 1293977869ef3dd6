"""A stream room's sensor and device state, read so that garbage cannot hide it.

Owns how a subscriber reads ``org.mxsync.sensor`` and ``org.mxsync.device``
state when it starts (PROTOCOL §1.7): each current state event that is
malformed, or whose sender lacked the level for it where it stands, is skipped
and logged, and the newest earlier version of the same state that passes
(:func:`mxsync.engine.state_history.newest_valid`) takes its place. When none
within reach passes, the sensor or device is unknown (the default), exactly as
if it had never been described; a live subscriber keeps the last valid value it
saw, so that a client that opens later agrees with one that was there.
"""

from __future__ import annotations

import logging
from typing import TypeAlias

from ..engine.authz import judge_state
from ..engine.events import RoomEvent
from ..engine.state_history import newest_valid
from ..engine.surface import Engine
from ..errors import ConfigError, ProtocolError
from ..protocol.readings import (
    DeviceState,
    SensorMeta,
    decode_device_state,
    decode_sensor_meta,
    validate_device_id,
    validate_sensor_id,
)
from ..protocol.types import DEVICE, SENSOR

__all__ = ["StreamState", "decode_state", "load_state"]

log = logging.getLogger(__name__)

StreamState: TypeAlias = SensorMeta | DeviceState


def decode_state(ev: RoomEvent) -> StreamState:
    """The value of a sensor or device state event. Raises ProtocolError or
    ConfigError (a bad state_key)."""
    assert ev.state_key is not None
    if ev.type == SENSOR:
        validate_sensor_id(ev.state_key)
        return decode_sensor_meta(ev.content)
    if ev.type == DEVICE:
        validate_device_id(ev.state_key)
        return decode_device_state(ev.content)
    raise ProtocolError(f"{ev.type} is not a stream state type")


def _try_decode(ev: RoomEvent) -> StreamState | None:
    try:
        return decode_state(ev)
    except (ProtocolError, ConfigError) as exc:
        log.warning("skipping %s %r (%s) from %s in %s: %s", ev.type, ev.state_key,
                    ev.event_id, ev.sender, ev.room_id, exc)
        return None


async def load_state(
    engine: Engine, room_id: str, creators: frozenset[str]
) -> list[tuple[RoomEvent, StreamState]]:
    """Every sensor and device of the room's current state with its newest valid
    version (the event it comes from and its value); the bad ones it replaces are
    logged. One state request, one listing of the room's levels, and a walk back
    only for the states that fail."""
    mine = [ev for ev in await engine.room_state(room_id)
            if ev.state_key is not None and ev.type in (SENSOR, DEVICE)]
    allowed = {ev.event_id for ev in await judge_state(engine, room_id, mine, creators)}
    out: list[tuple[RoomEvent, StreamState]] = []
    for current in mine:
        value = _try_decode(current) if current.event_id in allowed else None
        if value is not None:
            out.append((current, value))
            continue

        async def accept(ev: RoomEvent, bad: str = current.event_id) -> StreamState | None:
            if ev.event_id == bad:
                return None
            if not await judge_state(engine, room_id, [ev], creators):
                return None
            return _try_decode(ev)

        found: tuple[RoomEvent, StreamState] | None = await newest_valid(
            engine, room_id, current, accept)
        if found is not None:
            out.append(found)
    return out
