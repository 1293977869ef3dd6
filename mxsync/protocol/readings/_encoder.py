"""BatchEncoder: readings in, ``org.mxsync.readings`` contents out.

Owns the publisher-side state machine: buffering readings per series, bringing
float mantissas to one exponent, estimating and measuring the JSON size, and
choosing the longest prefix that fits the byte budget (invariant 2). Sans-I/O:
times are passed in, contents are returned.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any, Final, NamedTuple, TypeAlias

from ...errors import ConfigError
from ..types import MAX_CONTENT_BYTES, MAX_SAFE_INT
from ._content import _JSON, _builtins
from ._limits import (
    MAX_BATCH_READINGS,
    MAX_PRECISION,
    MAX_RAW_BYTES,
    MAX_SERIES,
    MAX_T_MS,
    MIN_BATCH_BYTES,
    MIN_T_MS,
)
from ._packing import _WORST_BOOL, _WORST_NUMBER, _WORST_STR, _pack_series
from ._schema import Compression, Reading, ReadingsBatch, Series
from ._values import (
    _FAST_BELOW,
    _FAST_FRAC,
    _POW10,
    _SCALE,
    Kind,
    Value,
    _check_int,
    _mantissa,
    _normalize,
    _utf8,
    validate_device_id,
    validate_precision,
    validate_sensor_id,
    validate_t_ms,
    validate_unit,
)


class _Series:
    """One series being buffered: values are mantissas at ``exp`` (float), ints,
    bools or UTF-8 bytes (str)."""

    __slots__ = ("sensor", "kind", "unit", "exp", "times", "vals", "header")

    def __init__(self, sensor: str, kind: Kind, unit: str | None, exp: int) -> None:
        self.sensor = sensor
        self.kind: Kind = kind
        self.unit = unit
        self.exp = exp
        self.times: list[int] = []
        self.vals: list[Any] = []
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


#: One reading as :meth:`BatchEncoder.add_rows` takes it:
#: ``(sensor, t_ms, value, unit, precision)``, the arguments of :meth:`BatchEncoder.add`.
ReadingRow: TypeAlias = tuple[str, int, Value, "str | None", "int | None"]

# Packed bytes an estimate may reach (the rest of MAX_RAW_BYTES is the margin).
_RAW_LIMIT: Final = MAX_RAW_BYTES - 4096
# The kinds _add_fast takes, by value type.
_KIND_OF: Final[dict[type, Kind]] = {float: "float", int: "int", bool: "bool"}
# A bound that never binds.
_UNBOUNDED: Final = 1 << 62

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
        # _fits_until's count bound, and the measurement and headers it is for.
        self._bound: tuple[tuple[int, ...], int] = ((), -1)

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
        if kind == "float" or kind == "int":
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

    def add_rows(
        self,
        rows: Sequence[ReadingRow],
        start: int = 0,
        stop: int | None = None,
        *,
        on_invalid: Callable[[int, ConfigError], object] | None = None,
    ) -> int:
        """Add ``rows[start:stop]`` in order, each ``(sensor, t_ms, value, unit,
        precision)``, until one makes :meth:`would_overflow` true; return the
        index after the last row taken (``stop``, or earlier when full).

        The same as this loop, state and bytes alike, only faster (floats with
        a precision, ints and bools of series already open take a path with no
        call per reading)::

            for i in range(start, stop):
                sensor, t_ms, value, unit, precision = rows[i]
                try:
                    self.add(sensor, t_ms, value, unit=unit, precision=precision)
                except ConfigError as exc:
                    if on_invalid is None:
                        raise
                    on_invalid(i, exc)
                    continue
                if self.would_overflow():
                    return i + 1
            return stop

        A row :meth:`add` refuses raises its ConfigError (the rows before it are
        taken, it and those after are not), or with ``on_invalid`` is skipped
        after ``on_invalid(index, error)``.
        """
        stop = len(rows) if stop is None else min(stop, len(rows))
        i = start
        while i < stop:
            i, full = self._add_fast(rows, i, stop)
            if full or i >= stop:
                return i
            # rows[i] needs the general path (a new series, a str, an exponent
            # change, a value the shortcut is not sure of, or a bad argument).
            sensor, t_ms, value, unit, precision = rows[i]
            i += 1
            try:
                self.add(sensor, t_ms, value, unit=unit, precision=precision)
            except ConfigError as exc:
                if on_invalid is None:
                    raise
                on_invalid(i - 1, exc)
                continue
            if self.would_overflow():
                return i
        return i

    def _add_fast(self, rows: Sequence[ReadingRow], i: int, stop: int) -> tuple[int, bool]:
        """Take rows from ``i`` while each is a float, int or bool reading of an
        open series with the exponent it needs (what :meth:`add` would do for it,
        inlined); stop at the first that is not, or once :meth:`would_overflow`
        is true. Returns the next index and whether the encoder is full."""
        count = start = synced = self._count
        worst = self._worst
        # The bounds within which would_overflow() is surely false (see the check
        # below); the first reading taken asks it, which also sets them.
        worst_at = count_at = full_at = -1
        check_at = count + 1
        current = self._current
        default = self._precision
        scale = _SCALE
        below, frac, safe, t_max = _FAST_BELOW, _FAST_FRAC, MAX_SAFE_INT, MAX_T_MS
        # sensor -> (value type, unit, exponent, times.append, vals.append) of the
        # series its last reading went to. Series do not change shape in here
        # (would_overflow only measures), so the bound methods stay valid.
        hot: dict[str, tuple[type, str | None, int, Callable[[Any], None],
                             Callable[[Any], None]]] = {}
        full = False
        for sensor, t, v, unit, p in islice(rows, i, stop):
            if type(t) is not int or not 0 <= t <= t_max:
                break
            tv = type(v)
            h = hot.get(sensor)
            if h is None or h[0] is not tv or h[1] != unit:
                s = current.get((sensor, _KIND_OF.get(tv), unit))  # type: ignore[arg-type]
                if s is None:
                    break
                h = hot[sensor] = (tv, unit, s.exp, s.times.append, s.vals.append)
            if p is None:
                p = default
            if tv is float:
                # ``is``: the exponent is a small int, so this also refuses a
                # bool or int subclass as precision (add() raises for those).
                if p is not h[2]:
                    break
                f = v * scale[p]  # type: ignore[index, operator]
                if not -below < f < below:
                    break
                m = round(f)
                if not -frac < f - m < frac:
                    break  # the exact route decides (_values._mantissa)
                h[3](t)
                h[4](m)
                worst += _WORST_NUMBER
            else:
                if p is not None and (type(p) is not int or not 0 <= p <= MAX_PRECISION):
                    break
                if tv is int:
                    if not -safe <= v <= safe:  # type: ignore[operator]
                        break
                    worst += _WORST_NUMBER
                else:
                    worst += _WORST_BOOL
                h[3](t)
                h[4](v)
            count += 1
            if count >= check_at:
                if count >= full_at or worst > worst_at or count > count_at:
                    self._count, self._worst = count, worst
                    self._version += 1
                    synced = count
                    if self.would_overflow():
                        full = True
                        break
                    worst_at, count_at = self._fits_until()
                    full_at = self._max_readings if len(self._order) < MAX_SERIES else 0
                # No bound can be passed before this count: a reading adds at
                # most _WORST_NUMBER to the worst case.
                check_at = min(full_at, count_at + 1,
                               count + (worst_at - worst) // _WORST_NUMBER + 1)
        if count != synced:
            self._count, self._worst = count, worst
            self._version += 1
        return i + count - start, full

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
            if max(map(abs, s.vals), default=0) * f <= MAX_SAFE_INT:
                s.vals = [x * f for x in s.vals]
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
        return self._measured_size(self._count)

    def _measured_size(self, count: int) -> int:
        per = (self._m_size - _ENVELOPE - self._m_headers) / self._m_count
        extra = count - self._m_count
        return self._m_size + (self._headers - self._m_headers) + math.ceil(extra * per)

    def _measured_raw(self, count: int) -> int:
        return math.ceil(self._m_raw * count / self._m_count)

    def _estimated_raw(self) -> int:
        if not self._m_count:
            return self._worst
        return self._measured_raw(self._count)

    def _fits_estimate(self) -> bool:
        return self.estimated_size() <= self._target and self._estimated_raw() <= _RAW_LIMIT

    def _fits_until(self) -> tuple[int, int]:
        """``(worst, count)``: while ``_worst <= worst`` and ``_count <= count``,
        :meth:`_fits_estimate` is true (headers and measurement as they are now),
        and false as soon as one is passed. ``_add_fast`` compares against these
        instead of estimating per reading; a bound below the current value means
        "ask :meth:`would_overflow`"."""
        if not self._m_count:
            # ENVELOPE + headers + 4 * ((worst + 2) // 3) <= target, solved for worst.
            room = self._target - _ENVELOPE - self._headers
            return (min(3 * (room // 4), _RAW_LIMIT) if room >= 0 else -1), _UNBOUNDED
        key = (self._m_count, self._m_size, self._m_raw, self._m_headers, self._headers)
        if self._bound[0] != key:
            self._bound = (key, self._count_bound())
        return _UNBOUNDED, self._bound[1]

    def _count_bound(self) -> int:
        """The largest count (up to max_readings) whose measured estimate fits, or
        -1: with the measurement as it is, the estimates only grow with the count,
        so the counts that fit are 0..bound. -1 also when the size estimate falls
        with the count (a header bound above what was measured): then
        ``_add_fast`` asks :meth:`would_overflow` after every reading."""
        if self._m_size - _ENVELOPE - self._m_headers < 0:
            return -1

        def fits(c: int) -> bool:
            return self._measured_size(c) <= self._target and self._measured_raw(c) <= _RAW_LIMIT

        if not fits(0):
            return -1
        lo, hi = 0, self._max_readings + 1  # fits(lo); hi: not known to fit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

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
                left = 0
        self._count = sum(len(s.times) for s in self._order)
        self._worst = sum(s.worst() for s in self._order)
        self._headers = sum(s.header for s in self._order)
        self._version += 1
        self._cache = None
        self._m_count = 0
