"""Single values and ids: what may travel, and its exact wire form.

Owns the value kinds, the syntax of sensor and device ids, the shared argument
checks (``_check_*``, raising whichever error the caller names: ConfigError
for arguments, ProtocolError for received content), and the exact number
encoding of invariant 3: a float as an integer mantissa and a decimal exponent,
by the shortest repr or by exact decimal rounding (:func:`encode_value`,
:func:`decode_value`).
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Final, Literal, NamedTuple, TypeAlias

from ...errors import ConfigError, ProtocolError
from ..types import MAX_SAFE_INT
from ._limits import MAX_PRECISION, MAX_STR_BYTES, MAX_T_MS, MAX_UNIT_BYTES, MIN_T_MS

Value: TypeAlias = int | float | bool | str
Kind: TypeAlias = Literal["int", "float", "bool", "str"]

KINDS: Final[tuple[Kind, ...]] = ("int", "float", "bool", "str")

_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
_POW10: Final[tuple[int, ...]] = tuple(10**i for i in range(MAX_PRECISION + 1))
# The exact decimal value of a double has at most 767 significant digits.
_EXACT: Final = Context(prec=1_000, rounding=ROUND_HALF_EVEN)
_ONE: Final = Decimal(1)
_EXACT_BELOW: Final = 2**52


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


# The fast mantissa (``_fast_mantissa``): floats 10**p, and the bounds within which
# rounding v * 10**p in binary gives the nearest integer to the exact product.
_SCALE: Final[tuple[float, ...]] = tuple(float(x) for x in _POW10)
_FAST_BELOW: Final = 1e12  # < 2**40: an ulp of the product is below 2**-12
_FAST_FRAC: Final = 0.4995  # |product - m| below this: m is the nearest (0.4995 + 2**-13 < 0.5)


def _fast_mantissa(v: float, p: int) -> int | None:
    """The mantissa ``_mantissa(v, p)`` gives, by one multiplication, or None
    when this shortcut cannot be sure (then ``_mantissa`` decides).

    ``f = v * 10**p`` is the exact product rounded once, so it is within half
    an ulp of it; below 2**40 that is under 2**-13. When ``f`` is more than
    that margin away from a half-integer, the integer nearest ``f`` is the
    integer nearest the exact product: the one the exact decimal route
    (``round(v, p)``, ties to even) finds. Ties, near-ties, large values, NaN
    and infinities all fail the bounds and return None.
    """
    f = v * _SCALE[p]
    if -_FAST_BELOW < f < _FAST_BELOW:
        m = round(f)
        if -_FAST_FRAC < f - m < _FAST_FRAC:
            return m
    return None


def _mantissa(v: float, precision: int | None) -> tuple[int, int]:
    """(m, p) with m / 10**p == round(v, p); p = precision or the shortest exact."""
    if precision is not None:
        f = v * _SCALE[precision]
        if -_FAST_BELOW < f < _FAST_BELOW:
            m = round(f)
            if -_FAST_FRAC < f - m < _FAST_FRAC:
                return m, precision  # the shortcut of _fast_mantissa, inlined
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
