"""The sensors of one publisher: declarations, checks of each reading, last values.

Invariants:
- :meth:`Sensors.row` raises ConfigError for every reading the encoder would
  refuse (NaN, infinities, a float needing more decimals than it may carry, an
  int beyond +-(2**53 - 1), a str over 256 bytes, a bad id, unit or time), so a
  bad reading fails at ``publish`` and never later; and it returns a row the
  encoder takes as it is.
- Automatic times never go back, even when the wall clock does.
- A sensor's state update (``org.mxsync.sensor``) carries a reading the
  homeserver already stores: its index is below the publisher's ``settled``
  mark when it is chosen. Updates for a sensor are at least ``interval`` apart.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..protocol.readings import (
    MAX_NAME_BYTES,
    MAX_T_MS,
    Reading,
    SensorMeta,
    Value,
    decode_value,
    encode_value,
    to_content,
    validate_precision,
    validate_sensor_id,
    validate_t_ms,
    validate_unit,
)
from ..protocol.types import MAX_SAFE_INT
from .buffer import Row

__all__ = ["Sensors", "SensorInfo"]

log = logging.getLogger("mxsync.streams.publisher")

# |value| below which a float with precision p surely has a mantissa within 2**53 - 1.
_FLOAT_LIMIT = tuple((MAX_SAFE_INT - 1) / 10**p * (1 - 1e-9) for p in range(10))


@dataclass(slots=True)
class SensorInfo:
    precision: int | None
    unit: str | None
    name: str | None
    last: Row | None = None
    #: Publisher index of ``last``.
    last_index: int = -1
    #: Index of the last reading reported in org.mxsync.sensor, and when (monotonic).
    meta_index: int = -1
    meta_at: float = -math.inf
    #: A last value chosen for the next state update, sent once it is stored.
    candidate: tuple[Row, int] | None = None


class Sensors:
    """Sensor declarations and last values of one device."""

    def __init__(self, device: str, precision: int | None) -> None:
        self._device = device
        self._precision = precision
        self._by_id: dict[str, SensorInfo] = {}
        self._units: set[str] = set()
        self._last_t = 0

    def declare(
        self,
        sensor: str,
        *,
        precision: int | None = None,
        unit: str | None = None,
        name: str | None = None,
    ) -> None:
        validate_sensor_id(sensor)
        if precision is None:
            precision = self._precision
        else:
            validate_precision(precision)
        if unit is not None:
            validate_unit(unit)
            self._units.add(unit)
        if name is not None and (not isinstance(name, str)
                                 or len(name.encode()) > MAX_NAME_BYTES):
            raise ConfigError(f"name must be a str of at most {MAX_NAME_BYTES} bytes of UTF-8")
        s = self._by_id.get(sensor)
        if s is None:
            self._by_id[sensor] = SensorInfo(precision, unit, name)
        else:
            s.precision, s.unit, s.name = precision, unit, name

    def get(self, sensor: str) -> SensorInfo:
        s = self._by_id.get(sensor)
        if s is None:
            validate_sensor_id(sensor)
            s = self._by_id[sensor] = SensorInfo(self._precision, None, None)
        return s

    def row(
        self, sensor: str, s: SensorInfo, value: Value, t: int | None, unit: str | None
    ) -> Row:
        """The buffered form of one reading, or ConfigError. The hot path of publish()."""
        if unit is None:
            unit = s.unit
        elif unit not in self._units:
            validate_unit(unit)
            self._units.add(unit)
        if t is None:
            t = int(time.time() * 1000)
            if t < self._last_t:
                t = self._last_t
            self._last_t = t
        elif type(t) is not int or not 0 <= t <= MAX_T_MS:
            t = validate_t_ms(t)
        tv = type(value)
        if tv is float:
            p = s.precision
            # Within +-_FLOAT_LIMIT[p] the mantissa fits: the encoder will take it.
            if p is None or not -_FLOAT_LIMIT[p] < value < _FLOAT_LIMIT[p]:  # type: ignore[operator]
                encode_value(value, p)  # NaN, infinities, too many decimals, too large
        elif tv is str:
            encode_value(value, s.precision)  # size, encodable
        elif tv is int:
            if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:  # type: ignore[operator]
                raise ConfigError(f"int value {value} is beyond +-(2**53 - 1)")
        elif tv is not bool:
            enc = encode_value(value, s.precision)  # refuses other types, accepts subclasses
            value = decode_value(enc.kind, enc.wire, enc.exp)
        return (sensor, t, value, unit, s.precision)

    def rebirth(self) -> None:
        """Count every sensor's last value as not reported yet (a rebirth
        re-announces them all with the next ``updates(final=True)``)."""
        for s in self._by_id.values():
            s.meta_index = -1
            s.candidate = None

    def updates(
        self, now: float, interval: float, settled: int, *, final: bool
    ) -> list[tuple[str, dict[str, Any]]]:
        """State contents to send now: the one most overdue sensor, or with
        ``final`` every sensor whose last value was not reported yet."""
        due = sorted(
            (s.meta_at, sensor)
            for sensor, s in self._by_id.items()
            if s.last_index > s.meta_index and (final or now - s.meta_at >= interval)
        )
        out = []
        for _, sensor in due:
            s = self._by_id[sensor]
            if final or s.candidate is None:
                s.candidate = None if s.last is None else (s.last, s.last_index)
            if s.candidate is None or s.candidate[1] >= settled:
                continue  # not stored yet: a state must not run ahead of the history
            row, index = s.candidate
            s.candidate = None
            s.meta_index, s.meta_at = index, now
            try:
                content = to_content(
                    SensorMeta.from_reading(
                        Reading(row[0], row[1], row[2], row[3], self._device),
                        precision=row[4] if type(row[2]) is float else None,
                        name=s.name,
                    )
                )
            except ConfigError as exc:
                log.error("publisher %s: cannot describe sensor %s: %s", self._device, sensor, exc)
                continue
            out.append((sensor, content))
            if not final:
                break
        return out
