"""The packed columns of ``org.mxsync.readings``: bytes in, bytes out.

Owns the byte layout of docs/PROTOCOL.md (zigzag LEB128 varints, delta and
delta-of-delta codes, bit-packed bools, length-prefixed UTF-8), the worst-case
size of one packed reading, and the bounded inflation of zlib data (the bomb
cap of invariant 4). Knows nothing of structs: a series is its kind, count,
times and values.
"""

from __future__ import annotations

import re
import zlib
from itertools import accumulate, islice, repeat
from operator import sub, truediv
from typing import Any, Final

from ...errors import ProtocolError
from ..types import MAX_SAFE_INT
from ._limits import MAX_RAW_BYTES, MAX_STR_BYTES, MAX_T_MS, MIN_T_MS
from ._values import _POW10, Kind

# Zigzag decoding of the one-byte varints 0..127, the common case.
_UNZIGZAG7: Final = tuple((z >> 1) ^ -(z & 1) for z in range(128))
# ... and encoding: the codes -64..63, whose zigzag varint is one byte.
_ZIGZAG7: Final = {(z >> 1) ^ -(z & 1): z for z in range(128)}
# The first byte of a varint longer than one byte.
_LONG: Final = re.compile(rb"[\x80-\xff]")
# After this many long varints in a column, if they are more than 1 in 8 of the
# codes so far, the rest of the column is coded one code at a time.
_LONG_RUNS: Final = 16
# Worst-case packed bytes per reading (layout in docs/PROTOCOL.md):
# a time code is below 2**45 after zigzag (7 varint bytes), a mantissa delta
# below 2**55 (8 bytes), a str length below 2**14 (2 bytes).
_WORST_TIME: Final = 7
_WORST_NUMBER: Final = _WORST_TIME + 8
_WORST_BOOL: Final = _WORST_TIME + 1
_WORST_STR: Final = _WORST_TIME + 2


# --------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------


def _put_codes(out: bytearray, codes: list[int]) -> None:
    """Append signed ints as zigzag LEB128 varints (|x| < 2**63).

    The codes within -64..63 (one byte each) are zigzagged through a table at
    C speed, the others marked 0x100; runs between marks are copied as bytes
    and each marked code is coded on its own. A column where long codes are
    common is coded one code at a time, as the table would only add work.
    The bytes are the same either way.
    """
    zs = list(map(_ZIGZAG7.get, codes, repeat(0x100)))
    try:
        out += bytes(zs)
        return
    except ValueError:  # a mark: some code needs more than one byte
        pass
    start = long = 0
    while True:
        try:
            pos = zs.index(0x100, start)
        except ValueError:
            out += bytes(zs[start:])
            return
        out += bytes(zs[start:pos])
        c = codes[pos]
        _put_uvarint(out, (c << 1) ^ (c >> 63))
        start = pos + 1
        long += 1
        if long >= _LONG_RUNS and long * 8 > start:
            _put_each(out, codes, start)
            return


def _put_each(out: bytearray, codes: list[int], start: int) -> None:
    """Append ``codes[start:]`` as zigzag varints, one code at a time."""
    append = out.append
    for c in islice(codes, start, None):
        z = (c << 1) ^ (c >> 63)
        while z >= 0x80:
            append((z & 0x7F) | 0x80)
            z >>= 7
        append(z)


def _put_uvarint(out: bytearray, z: int) -> None:
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def _deltas(xs: list[int]) -> list[int]:
    """``[xs[i + 1] - xs[i] for i ...]``, at C speed."""
    return list(map(sub, islice(xs, 1, None), xs))


def _regular(times: list[int]) -> bool:
    """Are the times evenly spaced (a sensor sampled at a fixed interval)?"""
    a, n = times[0], len(times)
    d = times[1] - a
    if times[-1] - a != d * (n - 1):
        return False
    if d == 0:
        return times.count(a) == n
    return times == list(range(a, a + n * d, d))


def _pack_series(out: bytearray, kind: Kind, times: list[int], vals: list[Any], t0: int) -> None:
    """Append the time column then the value column of one series."""
    codes = [times[0] - t0]
    n = len(times)
    if n > 2 and _regular(times):
        # A fixed interval: every delta of deltas is 0, one zero byte each.
        codes.append(times[1] - times[0])
        _put_codes(out, codes)
        out += bytes(n - 2)
    else:
        if n > 1:
            deltas = _deltas(times)
            codes.append(deltas[0])
            codes += _deltas(deltas)
        _put_codes(out, codes)
    if kind == "int" or kind == "float":
        codes = [vals[0]]
        codes += _deltas(vals)
        _put_codes(out, codes)
    elif kind == "bool":
        nbytes = (len(vals) + 7) >> 3
        bits = "".join(["1" if v else "0" for v in reversed(vals)])
        out += int(bits, 2).to_bytes(nbytes, "little")
    else:
        for b in vals:
            _put_uvarint(out, len(b))
            out += b


# --------------------------------------------------------------------------
# Unpacking
# --------------------------------------------------------------------------


def _read_codes(raw: bytes, pos: int, n: int, what: str) -> tuple[list[int], int]:
    """Read n zigzag varints at pos; return them and the new position.

    Runs of one-byte varints are decoded through a table at C speed (a regular
    expression finds the next long one); a column where long varints are
    common, and any malformed one, goes through :func:`_read_each`, which also
    words the errors.
    """
    start = pos
    out: list[int] = []
    one = _UNZIGZAG7.__getitem__
    search = _LONG.search
    long = 0
    while True:
        need = n - len(out)
        m = search(raw, pos, pos + need)
        if m is None:
            seg = raw[pos : pos + need]
            if len(seg) < need:
                break  # truncated: let _read_each say where
            out += map(one, seg)
            return out, pos + need
        hi = m.start()
        out += map(one, raw[pos:hi])
        z, pos = _uvarint_at(raw, hi)
        if pos < 0:
            break
        out.append((z >> 1) ^ -(z & 1))
        long += 1
        if len(out) == n:
            return out, pos
        if long >= _LONG_RUNS and long * 8 > len(out):
            rest, pos = _read_each(raw, pos, n - len(out), what)
            out += rest
            return out, pos
    return _read_each(raw, start, n, what)


def _uvarint_at(raw: bytes, pos: int) -> tuple[int, int]:
    """The varint at pos and the position after it; (0, -1) if it is truncated
    or longer than 10 bytes."""
    z = 0
    shift = 0
    size = len(raw)
    while pos < size and shift < 70:
        b = raw[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            return z, pos
        shift += 7
    return 0, -1


def _read_each(raw: bytes, pos: int, n: int, what: str) -> tuple[list[int], int]:
    """:func:`_read_codes`, one varint at a time. Raises ProtocolError."""
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


def _unpack_series(
    raw: bytes, pos: int, sensor: str, kind: Kind, n: int, precision: int, t0: int
) -> tuple[list[int], list[Any], int]:
    """Read the time column then the value column of one series at ``pos`` (the
    inverse of :func:`_pack_series`): its times, its values (a float as
    mantissa / 10**precision) and the position after it. ``sensor`` names the
    series in errors. Raises ProtocolError."""
    where = f"time column of series {sensor}"
    head, after = _read_codes(raw, pos, min(n, 2), where)
    times: list[int]
    if n > 2 and raw.count(0, after, after + n - 2) == n - 2:
        # A fixed interval (every delta of deltas 0): the times are a range.
        first, step = t0 + head[0], head[1]
        times = [first] * n if step == 0 else list(range(first, first + n * step, step))
        pos = after + n - 2
        low, high = (times[0], times[-1]) if step >= 0 else (times[-1], times[0])
    else:
        codes, pos = _read_codes(raw, pos, n, where)
        first = t0 + codes[0]
        times = list(accumulate(accumulate(islice(codes, 1, None)), initial=first))
        low, high = min(times), max(times)
    if low < MIN_T_MS or high > MAX_T_MS:
        raise ProtocolError(f"series {sensor}: a time is outside 1970..2200")
    vals: list[Any]
    where = f"value column of series {sensor}"
    if kind == "int" or kind == "float":
        codes, pos = _read_codes(raw, pos, n, where)
        vals = list(accumulate(codes))
        if min(vals) < -MAX_SAFE_INT or max(vals) > MAX_SAFE_INT:
            raise ProtocolError(f"series {sensor}: a value is beyond +-(2**53 - 1)")
        if kind == "float":
            vals = list(map(truediv, vals, repeat(_POW10[precision])))
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
