"""The msgspec structs of the reading contents, and what makes one valid.

Owns the field layout of ``org.mxsync.readings`` (:class:`ReadingsBatch`,
whose :class:`Series` headers describe the packed columns), ``org.mxsync.sensor``
(:class:`SensorMeta`) and ``org.mxsync.device`` (:class:`DeviceState`), the
decoded :class:`Reading`, and the ``_check_*`` rules a struct must satisfy,
shared by decoding (ProtocolError) and :func:`to_content` (ConfigError).
``_unpack`` turns a checked batch into readings through ``_packing``.
"""

from __future__ import annotations

from itertools import repeat
from typing import Literal, TypeAlias

import msgspec

from ...errors import ProtocolError
from ..types import MAX_EVENT_BYTES, MAX_SAFE_INT
from ._limits import (
    MAX_BATCH_READINGS,
    MAX_DESCRIPTION_BYTES,
    MAX_NAME_BYTES,
    MAX_PRECISION,
    MAX_RAW_BYTES,
    MAX_REASON_BYTES,
    MAX_SERIES,
    MAX_STR_BYTES,
    MAX_T_MS,
    MIN_T_MS,
)
from ._packing import _inflate, _unpack_series
from ._values import (
    KINDS,
    Kind,
    Value,
    _check_id,
    _check_int,
    _check_text,
    _check_unit,
    _short,
    decode_value,
    encode_value,
    validate_t_ms,
)

Compression: TypeAlias = Literal["zlib", "none"]


class Reading(msgspec.Struct, frozen=True, gc=False):
    """One sensor reading. ``device`` and ``seq`` are filled in by the decoder
    from the batch the reading came in; ``seq`` is that batch's number. A
    Subscriber also fills in ``session`` (the batch's) and ``index`` (the
    reading's place in its batch, as packed), so that :attr:`identity` names
    the reading for good (a sink de-duplicates by it)."""

    sensor: str
    t_ms: int
    value: int | float | bool | str
    unit: str | None = None
    device: str | None = None
    seq: int | None = None
    session: int | None = None
    index: int | None = None

    @property
    def identity(self) -> tuple[str | None, int | None, int | None, int | None]:
        """``(device, session, seq, index)``: the same for every copy of this
        reading a subscriber hands out (live, after a restart, a replay)."""
        return (self.device, self.session, self.seq, self.index)


class _Content(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of the event contents; the Matrix event type is the discriminator."""


class Series(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Header of one packed series of a :class:`ReadingsBatch`."""

    sensor: str
    kind: Kind
    #: Number of readings; they are packed in ``ReadingsBatch.data``.
    n: int
    #: float only: a value is its mantissa / 10**precision.
    precision: int = 0
    unit: str | None = None


class ReadingsBatch(_Content, frozen=True, kw_only=True, omit_defaults=True):
    """Content of ``org.mxsync.readings``: readings of one device."""

    v: int = 1
    device: str
    #: Identifies one run of the publisher (a boot counter or random number);
    #: ``seq`` restarts at 0 when it changes.
    session: int | None = None
    #: Batch number, +1 per batch of this device and session: a jump is a gap.
    seq: int
    #: Base time in ms; each series' first time is coded relative to it.
    t0_ms: int
    compression: Compression = "zlib"
    series: list[Series]
    #: The packed columns of all series, in order (base64 on the wire).
    data: bytes

    def readings(self, *, identity: bool = False) -> list[Reading]:
        """Unpack the readings, series by series, each series in its order.

        With ``identity`` each reading also carries the batch's ``session`` and
        its ``index`` in the batch (as a Subscriber hands readings out).
        Raises ProtocolError if the batch is malformed.
        """
        _check_batch(self, ProtocolError)
        return _unpack(self, identity=identity)


class SensorMeta(_Content, frozen=True, kw_only=True, omit_defaults=True):
    """Content of ``org.mxsync.sensor`` (state_key = sensor id)."""

    v: int = 1
    kind: Kind
    device: str | None = None
    name: str | None = None
    unit: str | None = None
    #: float only: decimals the publisher rounds to (None: shortest exact).
    precision: int | None = None
    #: Last value in wire form (for a float, its mantissa) ...
    last: int | bool | str | None = None
    #: ... float only: the last value is ``last / 10**last_exp``.
    last_exp: int = 0
    last_t_ms: int | None = None
    #: What the sensor measures (SENSOR_KINDS); None: not said. A reader treats
    #: a str it does not know as None.
    sensor_kind: str | None = None
    #: ``sensor_kind == "enum"`` only: the values it takes.
    values: list[str] | None = None

    @classmethod
    def from_reading(
        cls,
        reading: Reading,
        *,
        precision: int | None = None,
        name: str | None = None,
        sensor_kind: str | None = None,
        values: list[str] | None = None,
    ) -> SensorMeta:
        """The state of ``reading.sensor`` after ``reading``. Raises ConfigError."""
        enc = encode_value(reading.value, precision)
        return cls(
            sensor_kind=sensor_kind,
            values=values,
            kind=enc.kind,
            device=reading.device,
            name=name,
            unit=reading.unit,
            precision=precision if enc.kind == "float" else None,
            last=enc.wire,
            last_exp=enc.exp,
            last_t_ms=validate_t_ms(reading.t_ms),
        )

    def last_value(self) -> Value | None:
        """The last value as a Python value, or None. Raises ProtocolError."""
        if self.last is None:
            return None
        return decode_value(self.kind, self.last, self.last_exp)


class DeviceState(_Content, frozen=True, kw_only=True, omit_defaults=True):
    """Content of ``org.mxsync.device`` (state_key = device id).

    A device announces ``online=True`` (birth) and refreshes it every
    ``heartbeat_ms``; ``online=False`` with a ``reason`` such as "shutdown" or
    "last-will" (sent by the homeserver as a delayed event) marks its death.
    """

    v: int = 1
    online: bool
    #: When this state began (ms).
    since_ms: int
    #: The promised interval between refreshes; 0 = no heartbeat.
    heartbeat_ms: int = 0
    session: int | None = None
    #: The last batch ``seq`` sent in ``session``.
    last_seq: int | None = None
    reason: str | None = None
    description: str | None = None


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def _check_batch(b: ReadingsBatch, err: type[Exception]) -> None:
    if b.v != 1:
        raise err(f"unsupported readings version {_short(b.v)}; this mxsync reads version 1")
    _check_id(b.device, "device", err)
    if b.session is not None:
        _check_int(b.session, 0, MAX_SAFE_INT, "session", err)
    _check_int(b.seq, 0, MAX_SAFE_INT, "seq", err)
    _check_int(b.t0_ms, MIN_T_MS, MAX_T_MS, "t0_ms", err)
    if b.compression not in ("zlib", "none"):
        raise err(f"unknown compression {_short(b.compression)}")
    if type(b.data) is not bytes or len(b.data) > MAX_EVENT_BYTES:
        raise err(f"data must be at most {MAX_EVENT_BYTES} bytes")
    if type(b.series) is not list or not 1 <= len(b.series) <= MAX_SERIES:
        raise err(f"a batch has 1..{MAX_SERIES} series")
    total = 0
    for h in b.series:
        if type(h) is not Series:
            raise err("series entries must be Series")
        _check_id(h.sensor, "sensor", err)
        if h.kind not in KINDS:
            raise err(f"series {h.sensor}: unknown kind {_short(h.kind)}")
        total += _check_int(h.n, 1, MAX_BATCH_READINGS, f"series {h.sensor}: n", err)
        if h.kind == "float":
            _check_int(h.precision, 0, MAX_PRECISION, f"series {h.sensor}: precision", err)
        elif h.precision != 0:
            raise err(f"series {h.sensor}: a {h.kind} series has no precision")
        _check_unit(h.unit, err)
    if total > MAX_BATCH_READINGS:
        raise err(f"a batch holds at most {MAX_BATCH_READINGS} readings, not {total}")


#: What a sensor measures (``org.mxsync.sensor`` ``sensor_kind``), and the value
#: kinds each takes.
SENSOR_KINDS: tuple[str, ...] = ("number", "boolean", "enum", "text", "counter")
_SENSOR_KIND_VALUES: dict[str, tuple[str, ...]] = {
    "number": ("int", "float"), "boolean": ("bool",), "enum": ("str",), "text": ("str",),
    "counter": ("int",),
}
#: Values an enum sensor may declare.
MAX_ENUM_VALUES = 64


def _check_sensor_meta(m: SensorMeta, err: type[Exception]) -> None:
    if m.v != 1:
        raise err(f"unsupported sensor version {_short(m.v)}; this mxsync reads version 1")
    if m.kind not in KINDS:
        raise err(f"unknown sensor kind {_short(m.kind)}")
    if m.device is not None:
        _check_id(m.device, "device", err)
    if m.name is not None:
        _check_text(m.name, MAX_NAME_BYTES, "name", err)
    _check_unit(m.unit, err)
    if m.precision is not None:
        if m.kind != "float":
            raise err(f"a {m.kind} sensor has no precision")
        _check_int(m.precision, 0, MAX_PRECISION, "precision", err)
    if m.sensor_kind is not None:
        _check_text(m.sensor_kind, 32, "sensor_kind", err)
        fits = _SENSOR_KIND_VALUES.get(m.sensor_kind)
        if fits is not None and m.kind not in fits:
            raise err(f"a {m.sensor_kind} sensor has no {m.kind} values")
    if m.values is not None:
        if m.sensor_kind != "enum":
            raise err("values are for enum sensors")
        if not 1 <= len(m.values) <= MAX_ENUM_VALUES:
            raise err(f"an enum has 1 to {MAX_ENUM_VALUES} values, not {len(m.values)}")
        for x in m.values:
            _check_text(x, MAX_STR_BYTES, "an enum value", err)
    if m.last is None:
        if m.last_exp != 0 or m.last_t_ms is not None:
            raise err("last_exp and last_t_ms need a last value")
        return
    if m.last_t_ms is None:
        raise err("a last value needs last_t_ms")
    _check_int(m.last_t_ms, MIN_T_MS, MAX_T_MS, "last_t_ms", err)
    try:
        decode_value(m.kind, m.last, m.last_exp)
    except ProtocolError as e:
        raise err(str(e)) from None


def _check_device_state(d: DeviceState, err: type[Exception]) -> None:
    if d.v != 1:
        raise err(f"unsupported device version {_short(d.v)}; this mxsync reads version 1")
    if type(d.online) is not bool:
        raise err("online must be a bool")
    _check_int(d.since_ms, MIN_T_MS, MAX_T_MS, "since_ms", err)
    _check_int(d.heartbeat_ms, 0, MAX_SAFE_INT, "heartbeat_ms", err)
    if d.session is not None:
        _check_int(d.session, 0, MAX_SAFE_INT, "session", err)
    if d.last_seq is not None:
        _check_int(d.last_seq, 0, MAX_SAFE_INT, "last_seq", err)
    if d.reason is not None:
        _check_text(d.reason, MAX_REASON_BYTES, "reason", err)
        if not d.reason or not d.reason.isprintable():
            raise err("reason must be non-empty printable text")
    if d.description is not None:
        _check_text(d.description, MAX_DESCRIPTION_BYTES, "description", err)


# --------------------------------------------------------------------------
# Unpacking
# --------------------------------------------------------------------------


def _unpack(batch: ReadingsBatch, *, identity: bool = False) -> list[Reading]:
    raw = _inflate(batch.data) if batch.compression == "zlib" else batch.data
    if len(raw) > MAX_RAW_BYTES:
        raise ProtocolError(f"packed data is more than {MAX_RAW_BYTES} bytes")
    out: list[Reading] = []
    pos = 0
    device, seq = batch.device, batch.seq
    session = batch.session if identity else None
    for h in batch.series:
        n = h.n
        times, vals, pos = _unpack_series(
            raw, pos, h.sensor, h.kind, n, h.precision, batch.t0_ms
        )
        # Without identity, session and index stay None (Reading's defaults).
        first = len(out)
        out += map(
            Reading,
            repeat(h.sensor, n),
            times,
            vals,
            repeat(h.unit, n),
            repeat(device, n),
            repeat(seq, n),
            repeat(session, n),
            range(first, first + n) if identity else repeat(None, n),
        )
    if pos != len(raw):
        raise ProtocolError(f"{len(raw) - pos} bytes left over after the last series")
    return out
