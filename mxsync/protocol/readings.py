"""The reading codec: IoT sensor readings packed exactly into Matrix event contents.

This module owns the contents of three event types (names in ``protocol.types``):

* ``org.mxsync.readings`` (timeline): :class:`ReadingsBatch`, thousands of
  readings of one device in one event, columnar per sensor, delta coded,
  zlib-compressed when that pays, carried as base64 in one string;
* ``org.mxsync.sensor`` (state, state_key = sensor id): :class:`SensorMeta`,
  what a sensor measures and its last value;
* ``org.mxsync.device`` (state, state_key = device id): :class:`DeviceState`,
  birth, heartbeat and last will of a device;

and :class:`BatchEncoder`, the small state machine a publisher feeds readings
into and takes event contents out of. Sans-I/O: no clock (times are passed in),
no network, no event loop. The normative text is docs/PROTOCOL.md ("Sensor
readings"); the byte layout described there is implemented here.

Invariants:

1. Every content produced here is canonical-JSON safe: dicts, lists, str, int
   and bool only, no float anywhere, every int within +-(2**53 - 1).
2. ``BatchEncoder.encode`` never returns a content whose JSON encoding is longer
   than the encoder's ``max_bytes`` (at most ``MAX_CONTENT_BYTES``). When its
   estimate was off it takes fewer readings; the rest stay buffered, in order.
3. Exactness. int, bool and str values come back identical (and with the same
   type: a bool is never an int here). A float ``v`` sent with precision ``p``
   travels as the integer mantissa ``m`` nearest to ``v * 10**p`` (on the exact
   binary value, ties to even) and comes back as the float ``m / 10**p``, which
   equals ``round(v, p)``. With no precision the shortest decimal that
   round-trips (``repr``) is sent, so the float comes back identical, and a
   float that needs more than 9 decimals is refused rather than rounded.
4. Decoding untrusted content raises :class:`~mxsync.errors.ProtocolError` and
   nothing else, and its work is bounded: at most ``MAX_BATCH_READINGS``
   readings and ``MAX_RAW_BYTES`` of decompressed data per event.
5. A bad argument raises :class:`~mxsync.errors.ConfigError` at the call that
   received it (``add``, ``encode_value``, ``to_content``), never later.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Context, Decimal
from itertools import accumulate, islice, pairwise, repeat
from typing import Any, Final, Literal, NamedTuple, TypeAlias

import msgspec

from ..errors import ConfigError, ProtocolError
from .types import MAX_CONTENT_BYTES, MAX_EVENT_BYTES, MAX_SAFE_INT

__all__ = [
    "Value",
    "Kind",
    "KINDS",
    "MIN_T_MS",
    "MAX_T_MS",
    "MAX_PRECISION",
    "MAX_STR_BYTES",
    "MAX_UNIT_BYTES",
    "MAX_NAME_BYTES",
    "MAX_DESCRIPTION_BYTES",
    "MAX_REASON_BYTES",
    "MAX_BATCH_READINGS",
    "MAX_SERIES",
    "MAX_RAW_BYTES",
    "MIN_BATCH_BYTES",
    "Reading",
    "Series",
    "ReadingsBatch",
    "SensorMeta",
    "DeviceState",
    "EncodedValue",
    "BatchEncoder",
    "validate_sensor_id",
    "validate_device_id",
    "validate_unit",
    "validate_precision",
    "validate_t_ms",
    "validate_value",
    "encode_value",
    "decode_value",
    "parse_batch",
    "decode_batch",
    "decode_sensor_meta",
    "decode_device_state",
    "to_content",
]

Value: TypeAlias = int | float | bool | str
Kind: TypeAlias = Literal["int", "float", "bool", "str"]
Compression: TypeAlias = Literal["zlib", "none"]

KINDS: Final[tuple[Kind, ...]] = ("int", "float", "bool", "str")
#: Times are int milliseconds since the Unix epoch, from 1970-01-01 ...
MIN_T_MS: Final = 0
#: ... to 2200-01-01T00:00:00Z.
MAX_T_MS: Final = 7_258_118_400_000
#: Decimals a float may carry: its mantissa is ``round(v * 10**p)``, 0 <= p <= 9.
MAX_PRECISION: Final = 9
#: A str value is at most this many bytes of UTF-8.
MAX_STR_BYTES: Final = 256
#: A unit ("Cel", "%RH", "kg/m3", "°C") is 1..32 bytes of printable UTF-8.
MAX_UNIT_BYTES: Final = 32
MAX_NAME_BYTES: Final = 256
MAX_DESCRIPTION_BYTES: Final = 1024
MAX_REASON_BYTES: Final = 64
#: Readings in one org.mxsync.readings event (the bound on decoding work).
MAX_BATCH_READINGS: Final = 65_536
#: Series in one org.mxsync.readings event.
MAX_SERIES: Final = 2_048
#: Bytes the packed columns of one event may take once decompressed (bomb cap).
MAX_RAW_BYTES: Final = 1 << 20
#: The smallest byte budget a BatchEncoder accepts: one reading of any shape fits.
MIN_BATCH_BYTES: Final = 4_096

_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
_POW10: Final[tuple[int, ...]] = tuple(10**i for i in range(MAX_PRECISION + 1))
# The exact decimal value of a double has at most 767 significant digits.
_EXACT: Final = Context(prec=1_000, rounding=ROUND_HALF_EVEN)
_ONE: Final = Decimal(1)
_EXACT_BELOW: Final = 2**52
# Zigzag decoding of the one-byte varints 0..127, the common case.
_UNZIGZAG7: Final = tuple((z >> 1) ^ -(z & 1) for z in range(128))
# Worst-case packed bytes per reading (layout in docs/PROTOCOL.md):
# a time code is below 2**45 after zigzag (7 varint bytes), a mantissa delta
# below 2**55 (8 bytes), a str length below 2**14 (2 bytes).
_WORST_TIME: Final = 7
_WORST_NUMBER: Final = _WORST_TIME + 8
_WORST_BOOL: Final = _WORST_TIME + 1
_WORST_STR: Final = _WORST_TIME + 2

_JSON: Final = msgspec.json.Encoder()


# --------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------


class Reading(msgspec.Struct, frozen=True, gc=False):
    """One sensor reading. ``device`` and ``seq`` are filled in by the decoder
    from the batch the reading came in; ``seq`` is that batch's number."""

    sensor: str
    t_ms: int
    value: int | float | bool | str
    unit: str | None = None
    device: str | None = None
    seq: int | None = None


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

    def readings(self) -> list[Reading]:
        """Unpack the readings, series by series, each series in its order.

        Raises ProtocolError if the batch is malformed.
        """
        _check_batch(self, ProtocolError)
        return _unpack(self)


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

    @classmethod
    def from_reading(
        cls,
        reading: Reading,
        *,
        precision: int | None = None,
        name: str | None = None,
    ) -> SensorMeta:
        """The state of ``reading.sensor`` after ``reading``. Raises ConfigError."""
        enc = encode_value(reading.value, precision)
        return cls(
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


class EncodedValue(NamedTuple):
    """A value in wire form: ``kind``, ``wire`` (float: the mantissa) and ``exp``."""

    kind: Kind
    wire: int | bool | str
    exp: int


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def _short(x: object) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _check_id(x: object, what: str, err: type[Exception]) -> str:
    if type(x) is not str or _ID_RE.fullmatch(x) is None:
        raise err(
            f"{what} id {_short(x)} is invalid: 1-128 characters from A-Z a-z 0-9 _ . : / -,"
            " starting with a letter or digit"
        )
    return x


def _check_int(x: object, lo: int, hi: int, what: str, err: type[Exception]) -> int:
    if type(x) is not int:
        raise err(f"{what} must be an int, not {type(x).__name__}")
    if not lo <= x <= hi:
        raise err(f"{what} {x} is out of range [{lo}, {hi}]")
    return x


def _check_text(x: object, limit: int, what: str, err: type[Exception]) -> str:
    if type(x) is not str:
        raise err(f"{what} must be a str, not {type(x).__name__}")
    try:
        size = len(x.encode("utf-8"))
    except UnicodeEncodeError:
        raise err(f"{what} {_short(x)} is not encodable as UTF-8") from None
    if size > limit:
        raise err(f"{what} is {size} bytes of UTF-8; at most {limit} are allowed")
    return x


def _check_unit(unit: object, err: type[Exception]) -> str | None:
    if unit is None:
        return None
    _check_text(unit, MAX_UNIT_BYTES, "unit", err)
    assert isinstance(unit, str)
    if not unit or not unit.isprintable():
        raise err(f"unit {_short(unit)} must be non-empty printable text")
    return unit


def validate_sensor_id(sensor: object) -> str:
    """Return ``sensor`` if it is a valid sensor id, else raise ConfigError.

    1-128 characters from ``A-Z a-z 0-9 _ . : / -``, starting with a letter or
    digit (SenML-like names: ``room1/temp``, ``urn:dev:ow:10e2073a01080063``).
    """
    return _check_id(sensor, "sensor", ConfigError)


def validate_device_id(device: object) -> str:
    """Return ``device`` if it is a valid device id (same syntax as sensor ids)."""
    return _check_id(device, "device", ConfigError)


def validate_unit(unit: object) -> str | None:
    """Return ``unit`` (None allowed) if it is 1-32 bytes of printable UTF-8."""
    return _check_unit(unit, ConfigError)


def validate_precision(precision: object) -> int:
    """Return ``precision`` if it is an int in 0..9, else raise ConfigError."""
    return _check_int(precision, 0, MAX_PRECISION, "precision", ConfigError)


def validate_t_ms(t_ms: object) -> int:
    """Return ``t_ms`` as an int if it is a time in ms between 1970 and 2200."""
    if isinstance(t_ms, int) and not isinstance(t_ms, bool):
        t_ms = int(t_ms)
    return _check_int(t_ms, MIN_T_MS, MAX_T_MS, "t_ms", ConfigError)


def _normalize(value: object) -> Value:
    """Plain int/float/bool/str from ``value`` (subclasses such as IntEnum
    become their base type), or ConfigError."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise ConfigError(
        f"value {_short(value)} has type {type(value).__name__};"
        " a reading is int, float, bool or str"
    )


def validate_value(value: object) -> Kind:
    """Return the kind of ``value`` if it can travel exactly, else raise ConfigError.

    A bool is kind "bool", never "int". NaN and infinities are refused, ints
    beyond +-(2**53 - 1) too, and str values over 256 bytes of UTF-8.
    """
    value = _normalize(value)
    if type(value) is float:
        if not math.isfinite(value):
            raise ConfigError(
                f"float value {value!r} is not finite; NaN and infinities cannot be sent"
            )
        return "float"
    return encode_value(value).kind


# --------------------------------------------------------------------------
# Exact values
# --------------------------------------------------------------------------


def _too_large(v: float, p: int) -> ConfigError:
    return ConfigError(
        f"float value {v!r} with precision {p} needs a mantissa beyond 2**53 - 1;"
        " use a lower precision or a larger unit"
    )


def _mantissa(v: float, precision: int | None) -> tuple[int, int]:
    """(m, p) with m / 10**p == round(v, p); p = precision or the shortest exact."""
    if not math.isfinite(v):
        raise ConfigError(f"float value {v!r} is not finite; NaN and infinities cannot be sent")
    if precision is None:
        return _shortest(v)
    scale = _POW10[precision]
    r = round(v, precision)
    f = r * scale
    if not -(2.0**54) <= f <= 2.0**54:
        raise _too_large(v, precision)
    m = round(f)
    if m / scale != r or not -_EXACT_BELOW < m < _EXACT_BELOW:
        # Below 2**52 a wrong m cannot pass the check, because neighbouring
        # mantissas are different floats. Above, r * scale may be an ulp off and
        # two mantissas may give the same float: take the exact decimal route so
        # the mantissa on the wire is always the nearest one.
        m = int(Decimal(v).quantize(_ONE.scaleb(-precision), context=_EXACT).scaleb(precision))
        if not -MAX_SAFE_INT <= m <= MAX_SAFE_INT:
            raise _too_large(v, precision)
    return m, precision


def _shortest(v: float) -> tuple[int, int]:
    s = repr(v)
    if "e" in s:
        _, _, exp = Decimal(s).as_tuple()
        assert isinstance(exp, int)
        p = max(0, -exp)
        if p > MAX_PRECISION:
            raise _needs_precision(v, p)
        m = int(Decimal(s).scaleb(p, _EXACT))
    else:
        i = s.index(".")
        frac = s[i + 1 :]
        if frac == "0":
            p, m = 0, int(s[:i])
        else:
            p = len(frac)
            if p > MAX_PRECISION:
                raise _needs_precision(v, p)
            m = int(s[:i] + frac)
    if not -MAX_SAFE_INT <= m <= MAX_SAFE_INT:
        raise _too_large(v, p)
    return m, p


def _needs_precision(v: float, p: int) -> ConfigError:
    return ConfigError(
        f"float value {v!r} needs {p} decimals to travel exactly (at most {MAX_PRECISION});"
        " pass precision= to round it"
    )


def _utf8(value: str) -> bytes:
    try:
        b = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"str value {_short(value)} is not encodable as UTF-8") from None
    if len(b) > MAX_STR_BYTES:
        raise ConfigError(f"str value is {len(b)} bytes of UTF-8; at most {MAX_STR_BYTES}")
    return b


def encode_value(value: Value, precision: int | None = None) -> EncodedValue:
    """The wire form of one value: int, bool and str as they are; a float as the
    mantissa ``m`` with ``exp`` such that ``m / 10**exp == round(value, exp)``.

    ``precision`` applies to floats only (None: the shortest exact decimal, at
    most 9 places). Raises ConfigError for anything that cannot travel exactly.
    """
    if precision is not None:
        validate_precision(precision)
    value = _normalize(value)
    if type(value) is float:
        m, p = _mantissa(value, precision)
        return EncodedValue("float", m, p)
    if type(value) is bool:
        return EncodedValue("bool", value, 0)
    if type(value) is int:
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise ConfigError(f"int value {value} is beyond +-(2**53 - 1)")
        return EncodedValue("int", value, 0)
    assert type(value) is str
    _utf8(value)
    return EncodedValue("str", value, 0)


def decode_value(kind: object, wire: object, exp: object = 0) -> Value:
    """The value of a wire form (see :func:`encode_value`). Raises ProtocolError."""
    if kind not in KINDS:
        raise ProtocolError(f"unknown value kind {_short(kind)}")
    if kind == "float":
        _check_int(exp, 0, MAX_PRECISION, "exponent", ProtocolError)
    elif exp != 0 or type(exp) is not int:
        raise ProtocolError(f"a {kind} value has exponent 0, not {_short(exp)}")
    if kind == "bool":
        if type(wire) is not bool:
            raise ProtocolError(f"a bool value must be true or false, not {_short(wire)}")
        return wire
    if kind == "str":
        _check_text(wire, MAX_STR_BYTES, "str value", ProtocolError)
        assert isinstance(wire, str)
        return wire
    m = _check_int(wire, -MAX_SAFE_INT, MAX_SAFE_INT, f"{kind} value", ProtocolError)
    if kind == "int":
        return m
    assert isinstance(exp, int)
    return m / _POW10[exp]


# --------------------------------------------------------------------------
# Packed columns: zigzag varints (see the spec for the byte layout)
# --------------------------------------------------------------------------


def _put_codes(out: bytearray, codes: list[int]) -> None:
    """Append signed ints as zigzag LEB128 varints (|x| < 2**63)."""
    zs = [(c << 1) ^ (c >> 63) for c in codes]
    if max(zs) < 0x80:
        out += bytes(zs)
        return
    append = out.append
    for z in zs:
        while z >= 0x80:
            append((z & 0x7F) | 0x80)
            z >>= 7
        append(z)


def _put_uvarint(out: bytearray, z: int) -> None:
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def _pack_series(out: bytearray, kind: Kind, times: list[int], vals: list[Any], t0: int) -> None:
    """Append the time column then the value column of one series."""
    codes = [times[0] - t0]
    if len(times) > 1:
        deltas = [b - a for a, b in pairwise(times)]
        codes.append(deltas[0])
        codes += [b - a for a, b in pairwise(deltas)]
    _put_codes(out, codes)
    if kind == "int" or kind == "float":
        codes = [vals[0]]
        codes += [b - a for a, b in pairwise(vals)]
        _put_codes(out, codes)
    elif kind == "bool":
        nbytes = (len(vals) + 7) >> 3
        bits = "".join(["1" if v else "0" for v in reversed(vals)])
        out += int(bits, 2).to_bytes(nbytes, "little")
    else:
        for b in vals:
            _put_uvarint(out, len(b))
            out += b


def _read_codes(raw: bytes, pos: int, n: int, what: str) -> tuple[list[int], int]:
    """Read n zigzag varints at pos; return them and the new position."""
    end = pos + n
    seg = raw[pos:end]
    if len(seg) == n and max(seg) < 0x80:
        return list(map(_UNZIGZAG7.__getitem__, seg)), end
    out: list[int] = []
    append = out.append
    size = len(raw)
    for _ in range(n):
        if pos >= size:
            raise ProtocolError(f"packed data ends inside the {what}")
        b = raw[pos]
        pos += 1
        if b < 0x80:
            append(_UNZIGZAG7[b])
            continue
        z = b & 0x7F
        shift = 7
        while True:
            if pos >= size:
                raise ProtocolError(f"packed data ends inside a varint of the {what}")
            b = raw[pos]
            pos += 1
            z |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift >= 70:
                raise ProtocolError(f"varint longer than 10 bytes in the {what}")
        append((z >> 1) ^ -(z & 1))
    return out, pos


def _read_uvarint(raw: bytes, pos: int, what: str) -> tuple[int, int]:
    z = 0
    shift = 0
    size = len(raw)
    while True:
        if pos >= size:
            raise ProtocolError(f"packed data ends inside the {what}")
        b = raw[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            return z, pos
        shift += 7
        if shift >= 70:
            raise ProtocolError(f"varint longer than 10 bytes in the {what}")


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, MAX_RAW_BYTES + 1)
    except zlib.error as e:
        raise ProtocolError(f"corrupt zlib data: {e}") from None
    if len(raw) > MAX_RAW_BYTES or d.unconsumed_tail:
        raise ProtocolError(f"packed data decompresses to more than {MAX_RAW_BYTES} bytes")
    if not d.eof:
        raise ProtocolError("truncated zlib stream")
    if d.unused_data:
        raise ProtocolError("bytes after the end of the zlib stream")
    return raw


def _unpack(batch: ReadingsBatch) -> list[Reading]:
    raw = _inflate(batch.data) if batch.compression == "zlib" else batch.data
    if len(raw) > MAX_RAW_BYTES:
        raise ProtocolError(f"packed data is more than {MAX_RAW_BYTES} bytes")
    out: list[Reading] = []
    pos = 0
    device, seq = batch.device, batch.seq
    for h in batch.series:
        n = h.n
        where = f"time column of series {h.sensor}"
        codes, pos = _read_codes(raw, pos, n, where)
        first = batch.t0_ms + codes[0]
        times = list(accumulate(accumulate(islice(codes, 1, None)), initial=first))
        if min(times) < MIN_T_MS or max(times) > MAX_T_MS:
            raise ProtocolError(f"series {h.sensor}: a time is outside 1970..2200")
        vals: list[Any]
        where = f"value column of series {h.sensor}"
        if h.kind == "int" or h.kind == "float":
            codes, pos = _read_codes(raw, pos, n, where)
            vals = list(accumulate(codes))
            if min(vals) < -MAX_SAFE_INT or max(vals) > MAX_SAFE_INT:
                raise ProtocolError(f"series {h.sensor}: a value is beyond +-(2**53 - 1)")
            if h.kind == "float":
                scale = _POW10[h.precision]
                vals = [m / scale for m in vals]
        elif h.kind == "bool":
            nbytes = (n + 7) >> 3
            chunk = raw[pos : pos + nbytes]
            if len(chunk) < nbytes:
                raise ProtocolError(f"packed data ends inside the {where}")
            pos += nbytes
            bits = format(int.from_bytes(chunk, "little"), f"0{nbytes * 8}b")[::-1]
            if "1" in bits[n:]:
                raise ProtocolError(f"padding bits set in the {where}")
            vals = [c == "1" for c in bits[:n]]
        else:
            vals = []
            for _ in range(n):
                size, pos = _read_uvarint(raw, pos, where)
                if size > MAX_STR_BYTES or pos + size > len(raw):
                    raise ProtocolError(f"bad str length {size} in the {where}")
                try:
                    vals.append(raw[pos : pos + size].decode("utf-8"))
                except UnicodeDecodeError:
                    raise ProtocolError(f"invalid UTF-8 in the {where}") from None
                pos += size
        out += map(
            Reading,
            repeat(h.sensor, n),
            times,
            vals,
            repeat(h.unit, n),
            repeat(device, n),
            repeat(seq, n),
        )
    if pos != len(raw):
        raise ProtocolError(f"{len(raw) - pos} bytes left over after the last series")
    return out


# --------------------------------------------------------------------------
# Content checks, decoding, encoding of single contents
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


def _convert(content: object, cls: type[Any], what: str) -> Any:
    if type(content) is not dict:
        raise ProtocolError(f"{what} content must be a JSON object, not {type(content).__name__}")
    v = content.get("v", 1)
    if type(v) is not int or v != 1:
        raise ProtocolError(f"unsupported {what} version {_short(v)}; this mxsync reads version 1")
    try:
        return msgspec.convert(content, cls)
    except msgspec.ValidationError as e:
        raise ProtocolError(f"malformed {what} content: {e}") from None
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise ProtocolError(f"malformed {what} content: {e!r}") from None


def parse_batch(content: object) -> ReadingsBatch:
    """Validate an ``org.mxsync.readings`` content and return its header and
    packed data without unpacking (enough to check device and seq for gaps or
    duplicates). Raises ProtocolError."""
    batch: ReadingsBatch = _convert(content, ReadingsBatch, "readings")
    _check_batch(batch, ProtocolError)
    return batch


def decode_batch(content: object) -> list[Reading]:
    """The readings of an ``org.mxsync.readings`` content, series by series.

    Strict: anything malformed raises ProtocolError, and nothing else is raised.
    """
    return _unpack(parse_batch(content))


def decode_sensor_meta(content: object) -> SensorMeta:
    """Validate an ``org.mxsync.sensor`` content. Raises ProtocolError."""
    meta: SensorMeta = _convert(content, SensorMeta, "sensor")
    _check_sensor_meta(meta, ProtocolError)
    return meta


def decode_device_state(content: object) -> DeviceState:
    """Validate an ``org.mxsync.device`` content. Raises ProtocolError."""
    state: DeviceState = _convert(content, DeviceState, "device")
    _check_device_state(state, ProtocolError)
    return state


def _json_safe(x: object) -> bool:
    """True if x is made of dict/list/str/bool/None and safe ints only."""
    t = type(x)
    if t is str or t is bool or x is None:
        return True
    if t is int:
        return -MAX_SAFE_INT <= x <= MAX_SAFE_INT  # type: ignore[operator]
    if t is list:
        return all(_json_safe(i) for i in x)  # type: ignore[attr-defined]
    if t is dict:
        return all(type(k) is str and _json_safe(i) for k, i in x.items())  # type: ignore[attr-defined]
    return False


def _builtins(obj: _Content) -> dict[str, Any]:
    content: dict[str, Any] = msgspec.to_builtins(obj)
    if not _json_safe(content):
        raise AssertionError(f"internal error: {type(obj).__name__} content is not canonical JSON")
    return content


def to_content(obj: ReadingsBatch | SensorMeta | DeviceState) -> dict[str, Any]:
    """The JSON-ready content dict of a struct, validated. Raises ConfigError."""
    match obj:
        case ReadingsBatch():
            _check_batch(obj, ConfigError)
        case SensorMeta():
            _check_sensor_meta(obj, ConfigError)
        case DeviceState():
            _check_device_state(obj, ConfigError)
        case _:
            raise ConfigError(f"cannot make a content of {type(obj).__name__}")
    content = _builtins(obj)
    size = len(_JSON.encode(content))
    if size > MAX_CONTENT_BYTES:
        raise ConfigError(f"content is {size} bytes; at most {MAX_CONTENT_BYTES}")
    return content


# --------------------------------------------------------------------------
# BatchEncoder
# --------------------------------------------------------------------------


class _Series:
    """One series being buffered: values are mantissas at ``exp`` (float), ints,
    bools or UTF-8 bytes (str)."""

    __slots__ = ("sensor", "kind", "unit", "exp", "times", "vals", "amax", "header")

    def __init__(self, sensor: str, kind: Kind, unit: str | None, exp: int) -> None:
        self.sensor = sensor
        self.kind: Kind = kind
        self.unit = unit
        self.exp = exp
        self.times: list[int] = []
        self.vals: list[Any] = []
        self.amax = 0
        # JSON bytes of this series' header at its largest (n, precision), comma.
        largest = Series(
            sensor=sensor,
            kind=kind,
            n=MAX_BATCH_READINGS,
            precision=MAX_PRECISION if kind == "float" else 0,
            unit=unit,
        )
        self.header = len(_JSON.encode(largest)) + 1

    def worst(self) -> int:
        n = len(self.times)
        if self.kind == "str":
            return n * _WORST_STR + sum(map(len, self.vals))
        return n * (_WORST_BOOL if self.kind == "bool" else _WORST_NUMBER)


class _Rendered(NamedTuple):
    k: int
    t0: int
    series: list[Series]
    compression: Compression
    data: bytes
    raw_len: int


# A content with the longest envelope (device id, session, seq, t0) and no series.
_ENVELOPE: Final = len(
    _JSON.encode(
        ReadingsBatch(
            device="d" * 128,
            session=MAX_SAFE_INT,
            seq=MAX_SAFE_INT,
            t0_ms=MAX_T_MS,
            compression="none",
            series=[],
            data=b"",
        )
    )
)


class BatchEncoder:
    """Buffers readings of one device and packs them into ``org.mxsync.readings``
    contents that stay within a byte budget.

    A publisher calls :meth:`add` for each reading, flushes when
    :meth:`would_overflow` says so or its timer fires, and sends each content
    :meth:`encode` returns::

        enc = BatchEncoder(precision=2)
        enc.add("temp", t_ms, 21.37, unit="Cel")
        if enc.would_overflow() or timer_fired:
            while enc:                      # usually one content
                content = enc.encode("dev1", seq)
                seq += 1
                outbox.put(READINGS, content)

    Readings keep their order within a series; a batch lists its series in the
    order their sensors first appeared. ``precision`` (0..9) rounds float
    values; None sends the shortest exact decimal (at most 9 places).
    ``max_bytes`` is the JSON budget of one content; lower it for encrypted
    rooms, where the ciphertext is base64 and about 4/3 of the content.
    """

    def __init__(
        self,
        *,
        precision: int | None = None,
        max_bytes: int = MAX_CONTENT_BYTES,
        max_readings: int = MAX_BATCH_READINGS,
        compression_level: int = 9,
    ) -> None:
        self._precision = None if precision is None else validate_precision(precision)
        self._max_bytes = _check_int(
            max_bytes, MIN_BATCH_BYTES, MAX_CONTENT_BYTES, "max_bytes", ConfigError
        )
        self._max_readings = _check_int(
            max_readings, 1, MAX_BATCH_READINGS, "max_readings", ConfigError
        )
        self._level = _check_int(compression_level, 0, 9, "compression_level", ConfigError)
        # Flush before the estimate leaves less than room for one more reading
        # and a new series header.
        self._target = self._max_bytes - 1024
        self._order: list[_Series] = []
        self._current: dict[tuple[str, Kind, str | None], _Series] = {}
        self._count = 0
        self._worst = 0  # upper bound of the packed bytes
        self._headers = 0  # upper bound of the JSON bytes of all series headers
        self._version = 0  # +1 per change; keys the cached rendering
        self._cache: tuple[int, _Rendered] | None = None
        self._hint = 0  # readings in the last content, if it left some behind
        # The last measurement: readings, content bytes, packed bytes, headers.
        self._m_count = 0
        self._m_size = 0
        self._m_raw = 0
        self._m_headers = 0

    def __len__(self) -> int:
        """Readings buffered and not yet encoded."""
        return self._count

    # -- adding ------------------------------------------------------------

    def add(
        self,
        sensor: str,
        t_ms: int,
        value: Value,
        *,
        unit: str | None = None,
        precision: int | None = None,
    ) -> None:
        """Buffer one reading. Raises ConfigError (and buffers nothing) if any
        argument is invalid. ``precision`` overrides the encoder's for floats."""
        if type(t_ms) is not int or not MIN_T_MS <= t_ms <= MAX_T_MS:
            t_ms = validate_t_ms(t_ms)
        if precision is None:
            precision = self._precision
        elif type(precision) is not int or not 0 <= precision <= MAX_PRECISION:
            validate_precision(precision)
        tv = type(value)
        kind: Kind
        wire: Any
        if tv is float:
            kind = "float"
            wire, p = _mantissa(value, precision)  # type: ignore[arg-type]
        elif tv is int:
            if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:  # type: ignore[operator]
                raise ConfigError(f"int value {value} is beyond +-(2**53 - 1)")
            kind, wire, p = "int", value, 0
        elif tv is bool:
            kind, wire, p = "bool", value, 0
        elif tv is str:
            kind, wire, p = "str", _utf8(value), 0  # type: ignore[arg-type]
        else:
            self.add(sensor, t_ms, _normalize(value), unit=unit, precision=precision)
            return
        key = (sensor, kind, unit)
        s = self._current.get(key)
        if s is None:
            s = self._open(sensor, kind, unit, p)
        elif p != s.exp:
            s, wire = self._fit(s, wire, p)
        if kind == "float":
            a = -wire if wire < 0 else wire
            if a > s.amax:
                s.amax = a
            self._worst += _WORST_NUMBER
        elif kind == "int":
            self._worst += _WORST_NUMBER
        elif kind == "bool":
            self._worst += _WORST_BOOL
        else:
            self._worst += _WORST_STR + len(wire)
        s.times.append(t_ms)
        s.vals.append(wire)
        self._count += 1
        self._version += 1

    def extend(self, readings: Iterable[Reading], *, precision: int | None = None) -> None:
        """:meth:`add` each reading (their ``device`` and ``seq`` are ignored)."""
        for r in readings:
            self.add(r.sensor, r.t_ms, r.value, unit=r.unit, precision=precision)

    def _open(self, sensor: str, kind: Kind, unit: str | None, exp: int) -> _Series:
        validate_sensor_id(sensor)
        validate_unit(unit)
        s = _Series(sensor, kind, unit, exp)
        self._current[(sensor, kind, unit)] = s
        self._order.append(s)
        self._headers += s.header
        return s

    def _fit(self, s: _Series, m: int, p: int) -> tuple[_Series, int]:
        """Bring a float mantissa at exponent p and series s to one exponent: the
        larger of the two, by scaling (exact). If that leaves 2**53, the reading
        opens a new series of the same sensor."""
        if p < s.exp:
            m2 = m * _POW10[s.exp - p]
            if -MAX_SAFE_INT <= m2 <= MAX_SAFE_INT:
                return s, m2
        else:
            f = _POW10[p - s.exp]
            if s.amax * f <= MAX_SAFE_INT:
                s.vals = [x * f for x in s.vals]
                s.amax *= f
                s.exp = p
                return s, m
        return self._open(s.sensor, s.kind, s.unit, p), m

    # -- sizing ------------------------------------------------------------

    def estimated_size(self) -> int:
        """Estimated JSON bytes of the content :meth:`encode` would return now.

        An upper bound until the encoder has measured a trial compression;
        afterwards an extrapolation from that measurement.
        """
        if not self._m_count:
            return _ENVELOPE + self._headers + 4 * ((self._worst + 2) // 3)
        per = (self._m_size - _ENVELOPE - self._m_headers) / self._m_count
        extra = self._count - self._m_count
        return self._m_size + (self._headers - self._m_headers) + math.ceil(extra * per)

    def _estimated_raw(self) -> int:
        if not self._m_count:
            return self._worst
        return math.ceil(self._m_raw * self._count / self._m_count)

    def _fits_estimate(self) -> bool:
        return (
            self.estimated_size() <= self._target and self._estimated_raw() <= MAX_RAW_BYTES - 4096
        )

    def would_overflow(self) -> bool:
        """True when the buffer should be encoded now: one more reading might
        not fit in one content. Cheap; now and then it compresses the buffer
        once to replace its worst-case estimate by a measurement."""
        if self._count == 0:
            return False
        if self._count >= self._max_readings or len(self._order) >= MAX_SERIES:
            return True
        if self._fits_estimate():
            return False
        if not self._m_count or self._count * 16 >= self._m_count * 17:
            self._measure()
            return not self._fits_estimate()
        return True

    def _measure(self) -> None:
        r, _ = self._render(self._count)
        self._m_count = self._count
        self._m_headers = self._headers
        if r is None:
            self._m_size = self._max_bytes + 1
            self._m_raw = MAX_RAW_BYTES + 1
            return
        self._cache = (self._version, r)
        self._m_raw = r.raw_len
        probe = self._batch(r, "d" * 128, MAX_SAFE_INT, MAX_SAFE_INT)
        self._m_size = len(_JSON.encode(probe))

    # -- encoding ------------------------------------------------------------

    def encode(self, device: str, seq: int, *, session: int | None = None) -> dict[str, Any]:
        """Take the oldest buffered readings that fit into one content and return
        that content (JSON-ready: dicts, lists, str, int, bool). Readings that
        did not fit stay buffered; call again with the next ``seq``.

        Raises ConfigError for a bad device id, seq or session, or when nothing
        is buffered.
        """
        validate_device_id(device)
        _check_int(seq, 0, MAX_SAFE_INT, "seq", ConfigError)
        if session is not None:
            _check_int(session, 0, MAX_SAFE_INT, "session", ConfigError)
        if not self._count:
            raise ConfigError("no readings to encode")
        k = min(self._count, self._max_readings)
        if self._hint:
            # The last content had to leave readings behind: start from its size
            # rather than from the whole (possibly huge) buffer.
            k = min(k, 2 * self._hint)
        found, fill = self._attempt(k, device, seq, session)
        if found is None:
            found = self._search(k, fill, device, seq, session)
        batch, rendered = found
        content = _builtins(batch)
        self._hint = rendered.k if rendered.k < self._count else 0
        self._consume(rendered.k)
        return content

    def _attempt(
        self, k: int, device: str, seq: int, session: int | None
    ) -> tuple[tuple[ReadingsBatch, _Rendered] | None, float]:
        """The content of the first k readings if it fits, and how full it is
        (its size over the limit it would break first; above 1 it does not fit)."""
        cached = self._cache
        r: _Rendered | None
        if cached is not None and cached[0] == self._version and cached[1].k == k:
            r, fill = cached[1], 0.0
        else:
            r, fill = self._render(k)
        if r is None:
            return None, fill
        batch = self._batch(r, device, seq, session)
        fill = max(fill, len(_JSON.encode(batch)) / self._max_bytes)
        return ((batch, r) if fill <= 1.0 else None), fill

    def _search(
        self, k: int, fill: float, device: str, seq: int, session: int | None
    ) -> tuple[ReadingsBatch, _Rendered]:
        """A prefix that fits and is nearly the longest (within 1/32 of it, or
        filling 97% of the limit), knowing that the prefix k does not fit.

        Guesses from how full the last attempt was, else bisects.
        """
        best = None
        lo, hi = 0, k  # the prefix lo fits (0: none tried), the prefix hi does not
        guess = int(k / fill * 0.985)
        while hi - lo > max(1, lo // 32):
            mid = guess if lo < guess < hi else (lo + hi + 1) // 2
            found, fill = self._attempt(mid, device, seq, session)
            if found is None:
                hi = mid
            else:
                lo, best = mid, found
                if fill >= 0.97:
                    break
            guess = int(mid / fill * 0.985) if fill > 0 else 0
        if best is None:
            raise AssertionError("internal error: one reading does not fit in a content")
        return best

    def _render(self, k: int) -> tuple[_Rendered | None, float]:
        """Pack the first k readings (in series order). None, with how far over
        the limit they are, if they exceed MAX_SERIES or MAX_RAW_BYTES."""
        chosen: list[tuple[_Series, int]] = []
        left = k
        for s in self._order:
            if left <= 0:
                break
            r = min(left, len(s.times))
            chosen.append((s, r))
            left -= r
        if len(chosen) > MAX_SERIES:
            return None, len(chosen) / MAX_SERIES
        t0 = min(s.times[0] for s, _ in chosen)
        out = bytearray()
        headers: list[Series] = []
        done = 0
        for s, r in chosen:
            whole = r == len(s.times)
            times = s.times if whole else s.times[:r]
            vals = s.vals if whole else s.vals[:r]
            _pack_series(out, s.kind, times, vals, t0)
            done += r
            if len(out) > MAX_RAW_BYTES:
                return None, len(out) / MAX_RAW_BYTES * k / done
            headers.append(
                Series(
                    sensor=s.sensor,
                    kind=s.kind,
                    n=r,
                    precision=s.exp if s.kind == "float" else 0,
                    unit=s.unit,
                )
            )
        raw = bytes(out)
        packed = zlib.compress(raw, self._level) if self._level else raw
        if len(packed) < len(raw):
            return _Rendered(k, t0, headers, "zlib", packed, len(raw)), 0.0
        return _Rendered(k, t0, headers, "none", raw, len(raw)), 0.0

    @staticmethod
    def _batch(r: _Rendered, device: str, seq: int, session: int | None) -> ReadingsBatch:
        return ReadingsBatch(
            device=device,
            session=session,
            seq=seq,
            t0_ms=r.t0,
            compression=r.compression,
            series=r.series,
            data=r.data,
        )

    def _consume(self, k: int) -> None:
        left = k
        while left:
            s = self._order[0]
            n = len(s.times)
            if n <= left:
                del self._order[0]
                key = (s.sensor, s.kind, s.unit)
                if self._current.get(key) is s:
                    del self._current[key]
                left -= n
            else:
                del s.times[:left]
                del s.vals[:left]
                if s.kind == "float":
                    s.amax = max(map(abs, s.vals))
                left = 0
        self._count = sum(len(s.times) for s in self._order)
        self._worst = sum(s.worst() for s in self._order)
        self._headers = sum(s.header for s in self._order)
        self._version += 1
        self._cache = None
        self._m_count = 0
