"""The sensors of one publisher: declarations, checks of each reading, last values.

Invariants:
- :meth:`Sensors.row` raises ConfigError for every reading the encoder would
  refuse (NaN, infinities, a float needing more decimals than it may carry, an
  int beyond +-(2**53 - 1), a str over 256 bytes, a bad id, unit or time), so a
  bad reading fails at ``publish`` and never later; and it returns a row the
  encoder takes as it is.
- A sensor has a kind (:data:`KINDS`): declared, or inferred from its first
  reading (number, boolean or text) and fixed from then on. A reading of
  another kind raises ConfigError naming the sensor, its kind and the value; a
  ``counter`` (an int >= 0) never goes down within the publisher's run; an
  ``enum`` takes only its declared values.
- Automatic times never go back, even when the wall clock does.
- A sensor's state update (``org.mxsync.sensor``) carries a reading the
  homeserver already stores: its index is below the publisher's ``settled``
  mark when it is chosen. Updates for a sensor are at least ``interval`` apart.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..protocol.readings import (
    MAX_ENUM_VALUES,
    MAX_NAME_BYTES,
    MAX_T_MS,
    SENSOR_KINDS,
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

__all__ = ["Sensors", "SensorInfo", "KINDS"]

#: What a sensor measures, and so which values it takes.
KINDS = SENSOR_KINDS

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
    #: One of KINDS; None until declared or inferred from the first reading.
    kind: str | None = None
    #: ``enum`` only: the values it may take.
    values: frozenset[str] | None = None
    #: ``counter`` only: its last value in this run.
    count: int | None = None


def _infer(value: Value) -> str:
    t = type(value)
    return "boolean" if t is bool else "text" if t is str else "number"


def _check_kind(sensor: str, s: SensorInfo, value: Value) -> None:
    """ConfigError unless ``value`` is of the sensor's kind (inferring it the first time)."""
    kind, t = s.kind, type(value)
    if kind is None:
        s.kind = _infer(value)
        return
    if kind == "number":
        ok = t is int or t is float
    elif kind == "boolean":
        ok = t is bool
    elif kind == "text":
        ok = t is str
    elif kind == "enum":
        ok = t is str and s.values is not None and value in s.values
    else:  # counter
        ok = t is int and value >= 0 and (s.count is None or value >= s.count)  # type: ignore[operator]
        if ok:
            s.count = value  # type: ignore[assignment]
        elif t is int and value >= 0:  # type: ignore[operator]
            raise ConfigError(f"sensor {sensor!r} is a counter: {value!r} is below its last "
                              f"value {s.count!r} (a counter never goes down in one run)")
    if not ok:
        what = "" if kind != "enum" else f" (one of {sorted(s.values or ())!r})"
        an = "an" if kind[0] in "aeiou" else "a"
        raise ConfigError(f"sensor {sensor!r} is {an} {kind} sensor{what}: "
                          f"{value!r} ({t.__name__}) is not {an} {kind}")


class Sensors:
    """Sensor declarations and last values of one device."""

    def __init__(self, device: str, precision: int | None) -> None:
        self._device = device
        self._precision = precision
        self._by_id: dict[str, SensorInfo] = {}
        #: The SensorInfo of a sensor seen before, else None (then :meth:`get`);
        #: publish() calls it for every reading.
        self.known = self._by_id.get
        self._units: set[str] = set()
        self._last_t = 0

    def declare(
        self,
        sensor: str,
        *,
        precision: int | None = None,
        unit: str | None = None,
        name: str | None = None,
        kind: str | None = None,
        values: Iterable[str] | None = None,
    ) -> None:
        validate_sensor_id(sensor)
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"sensor {sensor!r}: kind must be one of {', '.join(KINDS)}, "
                              f"got {kind!r}")
        if precision is not None and kind not in (None, "number"):
            raise ConfigError(f"sensor {sensor!r}: precision is for number sensors, "
                              f"not {kind}")
        allowed: frozenset[str] | None = None
        if kind == "enum":
            if values is None or isinstance(values, str):
                raise ConfigError(f"sensor {sensor!r}: an enum needs values=[...] (strs)")
            allowed = frozenset(values)
            if (not allowed or len(allowed) > MAX_ENUM_VALUES
                    or not all(type(v) is str for v in allowed)):
                raise ConfigError(f"sensor {sensor!r}: enum values must be 1 to "
                                  f"{MAX_ENUM_VALUES} strs, got {values!r}")
            for v in allowed:
                encode_value(v, None)  # within the str limit
        elif values is not None:
            raise ConfigError(f"sensor {sensor!r}: values are for enum sensors, not {kind}")
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
            s = self._by_id[sensor] = SensorInfo(precision, unit, name)
        else:
            s.precision, s.unit, s.name = precision, unit, name
        if kind is not None:
            if s.kind is not None and s.kind != kind and s.last is not None:
                raise ConfigError(f"sensor {sensor!r} is a {s.kind} sensor already "
                                  f"(from its readings), it cannot become a {kind}")
            s.kind, s.values = kind, allowed

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
        if s.kind != "number" or (tv is not float and tv is not int):
            _check_kind(sensor, s, value)
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
                        sensor_kind=s.kind,
                        values=None if s.values is None else sorted(s.values),
                    )
                )
            except ConfigError as exc:
                log.error("publisher %s: cannot describe sensor %s: %s", self._device, sensor, exc)
                continue
            out.append((sensor, content))
            if not final:
                break
        return out
