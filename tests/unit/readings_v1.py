"""The readings codec as it was before issue #18's speed work (commit 32c5ad1):
the reference the faster code must match, byte for byte and reading for reading.

A frozen copy, not a module to maintain: ``BatchEncoder`` (buffering, sizing,
the prefix search), the exact float mantissa (``_mantissa``), the column packer
and the decoder (``unpack``), copied verbatim from ``mxsync/protocol/readings``.
Only what did not change is imported from the live package (limits, checks,
structs, the JSON encoder). Do not edit: a test that needs other behaviour
compares against the spec packer in test_protocol_readings.py instead.
"""

# ruff: noqa

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from decimal import Decimal
from itertools import accumulate, islice, pairwise, repeat
from typing import Any, Final, NamedTuple

from mxsync.errors import ConfigError, ProtocolError
from mxsync.protocol.types import MAX_CONTENT_BYTES, MAX_SAFE_INT
from mxsync.protocol.readings._content import _JSON, _builtins
from mxsync.protocol.readings._limits import (
    MAX_BATCH_READINGS,
    MAX_PRECISION,
    MAX_RAW_BYTES,
    MAX_SERIES,
    MAX_STR_BYTES,
    MAX_T_MS,
    MIN_BATCH_BYTES,
    MIN_T_MS,
)
from mxsync.protocol.readings._packing import _inflate
from mxsync.protocol.readings._schema import Compression, Reading, ReadingsBatch, Series
from mxsync.protocol.readings._values import (
    _EXACT,
    _EXACT_BELOW,
    _ONE,
    _POW10,
    Kind,
    Value,
    _check_int,
    _needs_precision,
    _normalize,
    _too_large,
    _utf8,
    validate_device_id,
    validate_precision,
    validate_sensor_id,
    validate_t_ms,
    validate_unit,
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


_UNZIGZAG7: Final = tuple((z >> 1) ^ -(z & 1) for z in range(128))


_WORST_TIME: Final = 7


_WORST_NUMBER: Final = _WORST_TIME + 8


_WORST_BOOL: Final = _WORST_TIME + 1


_WORST_STR: Final = _WORST_TIME + 2


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


def _unpack_series(
    raw: bytes, pos: int, sensor: str, kind: Kind, n: int, precision: int, t0: int
) -> tuple[list[int], list[Any], int]:
    """Read the time column then the value column of one series at ``pos`` (the
    inverse of :func:`_pack_series`): its times, its values (a float as
    mantissa / 10**precision) and the position after it. ``sensor`` names the
    series in errors. Raises ProtocolError."""
    where = f"time column of series {sensor}"
    codes, pos = _read_codes(raw, pos, n, where)
    first = t0 + codes[0]
    times = list(accumulate(accumulate(islice(codes, 1, None)), initial=first))
    if min(times) < MIN_T_MS or max(times) > MAX_T_MS:
        raise ProtocolError(f"series {sensor}: a time is outside 1970..2200")
    vals: list[Any]
    where = f"value column of series {sensor}"
    if kind == "int" or kind == "float":
        codes, pos = _read_codes(raw, pos, n, where)
        vals = list(accumulate(codes))
        if min(vals) < -MAX_SAFE_INT or max(vals) > MAX_SAFE_INT:
            raise ProtocolError(f"series {sensor}: a value is beyond +-(2**53 - 1)")
        if kind == "float":
            scale = _POW10[precision]
            vals = [m / scale for m in vals]
    elif kind == "bool":
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
    return times, vals, pos


def unpack(batch: ReadingsBatch) -> list[Reading]:
    raw = _inflate(batch.data) if batch.compression == "zlib" else batch.data
    if len(raw) > MAX_RAW_BYTES:
        raise ProtocolError(f"packed data is more than {MAX_RAW_BYTES} bytes")
    out: list[Reading] = []
    pos = 0
    device, seq = batch.device, batch.seq
    for h in batch.series:
        n = h.n
        times, vals, pos = _unpack_series(
            raw, pos, h.sensor, h.kind, n, h.precision, batch.t0_ms
        )
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
