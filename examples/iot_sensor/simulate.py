"""Simulated devices that produce realistic readings, with no I/O and no clock.

- :class:`Climate`: a room or greenhouse sensor. Temperature follows a daily
  curve (coolest around 05:00, warmest around 15:00, local time) with slowly
  wandering noise; relative humidity moves against the temperature, as it does
  in a closed room, with its own noise.
- :class:`Door`: a door contact. Closed most of the time; opens now and then
  (every few minutes on average) and stays open a few seconds.

Each device is sampled with a time in ms and returns ``(sensor, value, unit)``
triples; the sensor id is ``<device>/<quantity>``. Units are SenML names
(``Cel``, ``%RH``). A seeded :class:`random.Random` makes a run repeatable.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Climate", "Device", "Door", "Sample", "parse_devices", "DEFAULT_DEVICES"]

Sample = tuple[str, float | bool, str | None]

DEFAULT_DEVICES = "office:climate,greenhouse:climate,front-door:door"


def _local_hour(t_ms: int) -> float:
    lt = time.localtime(t_ms / 1000)
    return lt.tm_hour + lt.tm_min / 60 + lt.tm_sec / 3600


@dataclass
class Climate:
    """Temperature (Cel, 2 decimals) and relative humidity (%RH, 1 decimal)."""

    name: str
    mean_c: float = 21.0
    swing_c: float = 2.5
    humidity: float = 45.0
    rng: random.Random = field(default_factory=random.Random)
    _drift: float = 0.0
    _hum_drift: float = 0.0

    def sample(self, t_ms: int) -> list[Sample]:
        hour = _local_hour(t_ms)
        daily = -math.cos(2 * math.pi * (hour - 3.0) / 24)  # -1 at 03:00, +1 at 15:00
        # AR(1) noise: the reading wanders a little around the curve, as a real one does.
        # Slow (minutes) and small (about 0.15 Cel, 0.5 %RH) like a real room's.
        self._drift = 0.995 * self._drift + self.rng.gauss(0, 0.015)
        temp = self.mean_c + self.swing_c * daily + self._drift + self.rng.gauss(0, 0.01)
        self._hum_drift = 0.995 * self._hum_drift + self.rng.gauss(0, 0.05)
        hum = self.humidity - 2.2 * (temp - self.mean_c) + self._hum_drift
        hum = min(98.0, max(5.0, hum))
        return [
            (f"{self.name}/temperature", round(temp, 2), "Cel"),
            (f"{self.name}/humidity", round(hum, 1), "%RH"),
        ]


@dataclass
class Door:
    """A door contact: ``True`` while open."""

    name: str
    mean_closed_s: float = 150.0
    mean_open_s: float = 8.0
    rng: random.Random = field(default_factory=random.Random)
    is_open: bool = False
    _last_ms: int | None = None

    def sample(self, t_ms: int) -> list[Sample]:
        dt = 1.0 if self._last_ms is None else max(0.0, (t_ms - self._last_ms) / 1000)
        self._last_ms = t_ms
        mean = self.mean_open_s if self.is_open else self.mean_closed_s
        if self.rng.random() < 1 - math.exp(-dt / mean):
            self.is_open = not self.is_open
        return [(f"{self.name}/door", self.is_open, None)]


Device = Climate | Door


def parse_devices(spec: str, seed: int | None = None) -> list[Device]:
    """``"office:climate,front-door:door"`` -> devices (kind defaults to climate)."""
    devices: list[Device] = []
    for i, item in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        name, _, kind = item.partition(":")
        kind = kind or ("door" if "door" in name else "climate")
        rng = random.Random(None if seed is None else seed + i)
        if kind == "climate":
            # Each room its own climate: a greenhouse is warmer and damper.
            warm = "green" in name
            devices.append(Climate(name, mean_c=24.0 if warm else 21.0,
                                   swing_c=4.0 if warm else 1.5,
                                   humidity=68.0 if warm else 42.0, rng=rng))
        elif kind == "door":
            devices.append(Door(name, rng=rng))
        else:
            raise ValueError(f"unknown device kind {kind!r} (climate or door)")
    if not devices:
        raise ValueError("no devices")
    return devices


def timeline(start_ms: int, end_ms: int, step_ms: int) -> Iterator[int]:
    """Times from ``start_ms`` (included) to ``end_ms`` (excluded), ``step_ms`` apart."""
    t = start_ms
    while t < end_ms:
        yield t
        t += step_ms
