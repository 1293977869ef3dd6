"""The fast readings codec against the one it replaced (issue #18): same bytes, same values.

``readings_v1`` is a frozen copy of the codec before the speed work. Every
piece that changed is compared with it on the same input: the float mantissa,
the varint columns both ways, the encoder fed row by row or through
``add_rows`` (what the publisher's pump does), and the decoder. Pure tests:
no server, no event loop; Hypothesis runs derandomized.
"""

from __future__ import annotations

import hashlib
import math
import random
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxsync.errors import ConfigError, ProtocolError
from mxsync.protocol.readings import (
    MAX_BATCH_READINGS,
    BatchEncoder,
    decode_batch,
    parse_batch,
)
from mxsync.protocol.readings._packing import (
    _pack_series,
    _put_codes,
    _read_codes,
    _unpack_series,
)
from mxsync.protocol.readings._values import _fast_mantissa, _mantissa
from mxsync.protocol.types import MAX_CONTENT_BYTES, MAX_SAFE_INT
from tests.unit import readings_v1 as v1

FIXED = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
T0 = 1_700_000_000_000
EXACT = Context(prec=1000, rounding=ROUND_HALF_EVEN)
_JSON = msgspec.json.Encoder()


def regular_series(n: int, sensors: int = 10, seed: int = 1) -> list[tuple[str, int, float]]:
    """bench_streams' workload (``sensors`` temperatures at 1 Hz, two decimals,
    a slow wave plus noise), from a fixed time so that its bytes can be pinned."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k, step = i % sensors, i // sensors
        v = 21.0 + k + 0.5 * math.sin(2 * math.pi * step / 3600) + rng.gauss(0, 0.02)
        out.append((f"s{k}", T0 + step * 1000, round(v, 2)))
    return out


def outcome(f: Any, *args: Any) -> Any:
    """What ``f(*args)`` gives: its result, or the type and text of its error."""
    try:
        return f(*args)
    except (ConfigError, ProtocolError) as e:
        return type(e), str(e)


# ---------------------------------------------------------------------------
# The float mantissa
# ---------------------------------------------------------------------------


def near_ties() -> st.SearchStrategy[tuple[float, int]]:
    """Values whose scaled product is at or next to a half-integer or an integer."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[float, int]:
        p = draw(st.integers(0, 9))
        k = draw(st.integers(-(10**12), 10**12))
        half = draw(st.sampled_from([0.0, 0.5]))
        v = (k + half) / 10**p
        for _ in range(draw(st.integers(0, 3))):
            v = math.nextafter(v, draw(st.sampled_from([math.inf, -math.inf])))
        return v, p

    return build()


@FIXED
@given(
    vp=st.one_of(
        st.tuples(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 9)),
        st.tuples(st.floats(min_value=-1e6, max_value=1e6), st.integers(0, 9)),
        st.tuples(st.floats(min_value=-(2.0**53), max_value=2.0**53), st.integers(0, 9)),
        near_ties(),
    )
)
def test_the_mantissa_is_the_old_one_for_every_float(vp: tuple[float, int]) -> None:
    v, p = vp
    assert outcome(_mantissa, v, p) == outcome(v1._mantissa, v, p)
    fast = _fast_mantissa(v, p)
    if fast is not None:
        assert (fast, p) == v1._mantissa(v, p)
        # ... which is the integer nearest the exact product, ties to even.
        assert fast == Decimal(v).scaleb(p, EXACT).to_integral_value(context=EXACT)


@pytest.mark.parametrize(
    ("v", "p"),
    [(0.125, 2), (0.375, 2), (2.675, 2), (-1.005, 2), (0.5, 0), (1.5, 0), (2.5, 0), (-2.5, 0),
     (-0.0, 3), (1e-10, 9), (1e12, 0), (999999999999.5, 0), (1e11 + 0.5, 0),
     (math.nan, 2), (math.inf, 2), (-math.inf, 0), (9007199254740991.0, 0), (1e16, 0)],
)
def test_ties_and_edges_take_the_exact_route(v: float, p: int) -> None:
    assert outcome(_mantissa, v, p) == outcome(v1._mantissa, v, p)
    if _fast_mantissa(v, p) is not None:
        assert (_fast_mantissa(v, p), p) == v1._mantissa(v, p)
    if math.isfinite(v) and Decimal(v).scaleb(p, EXACT) % 1 in (Decimal("0.5"), Decimal("-0.5")):
        assert _fast_mantissa(v, p) is None  # an exact tie is never decided by the shortcut


# ---------------------------------------------------------------------------
# Varint columns
# ---------------------------------------------------------------------------


def code_lists() -> st.SearchStrategy[list[int]]:
    small = st.integers(-64, 63)
    big = st.one_of(st.integers(-(2**20), 2**20), st.integers(-(2**62), 2**62))
    return st.one_of(
        st.lists(small, max_size=300),
        st.lists(st.one_of(small, small, small, small, small, small, small, big), max_size=600),
        st.lists(st.one_of(small, big), max_size=300),
        st.lists(big, max_size=100),
    )


@FIXED
@given(codes=code_lists())
def test_columns_pack_to_the_old_bytes(codes: list[int]) -> None:
    new, old = bytearray(), bytearray()
    _put_codes(new, codes)
    v1._put_codes(old, codes) if codes else None
    assert bytes(new) == bytes(old)
    assert _read_codes(bytes(new), 0, len(codes), "x") == (codes, len(new))


def test_long_codes_every_few_readings_pack_to_the_old_bytes() -> None:
    rnd = random.Random(4)
    for every in (1, 2, 5, 9, 30, 200, 5000):
        codes = [rnd.randrange(-50, 50) if i % every else rnd.randrange(-(2**40), 2**40)
                 for i in range(20_000)]
        new, old = bytearray(), bytearray()
        _put_codes(new, codes)
        v1._put_codes(old, codes)
        assert new == old
        assert _read_codes(bytes(new) + b"tail", 0, len(codes), "x") == (codes, len(new))


@FIXED
@given(
    start=st.integers(T0 - 10**6, T0 + 10**6),
    step=st.one_of(st.just(1000), st.just(0), st.integers(-5000, 5000)),
    n=st.integers(1, 400),
    jitter=st.lists(st.tuples(st.integers(0, 399), st.integers(-3, 3)), max_size=3),
    kind=st.sampled_from(["int", "float", "bool", "str"]),
    seed=st.integers(0, 1000),
)
def test_series_pack_to_the_old_bytes(
    start: int, step: int, n: int, jitter: list[tuple[int, int]], kind: str, seed: int
) -> None:
    # Evenly spaced times take a shortcut; nearly even ones must not.
    times = [start + i * step for i in range(n)]
    for i, dt in jitter:
        if i < n:
            times[i] += dt
    rnd = random.Random(seed)
    vals: list[Any]
    if kind in ("int", "float"):
        vals = [rnd.choice([0, 1, -1, 2137, rnd.randrange(-(2**50), 2**50)]) for _ in times]
    elif kind == "bool":
        vals = [rnd.random() < 0.3 for _ in times]
    else:
        vals = [rnd.choice(["a", "bc", "é" * 100]).encode() for _ in times]
    new, old = bytearray(), bytearray()
    _pack_series(new, kind, times, vals, T0)  # type: ignore[arg-type]
    v1._pack_series(old, kind, times, vals, T0)
    assert new == old
    for raw in (bytes(new), bytes(new) + b"\x00\x01", bytes(new)[:-1], bytes(new)[: len(new) // 2]):
        args = (raw, 0, "s", kind, n, 2, T0)
        assert outcome(_unpack_series, *args) == outcome(v1._unpack_series, *args)


@FIXED
@given(raw=st.binary(max_size=80), pos=st.integers(0, 8), n=st.integers(1, 60))
def test_reading_any_bytes_gives_the_old_result_or_error(raw: bytes, pos: int, n: int) -> None:
    assert outcome(_read_codes, raw, pos, n, "time column") == outcome(
        v1._read_codes, raw, pos, n, "time column"
    )


# ---------------------------------------------------------------------------
# The encoder, fed as the pump feeds it
# ---------------------------------------------------------------------------

SENSORS = ["a", "b", "room/c", "d", "e"]
UNITS = [None, None, "Cel", "%RH"]


def random_rows(seed: int, n: int, mix: str, bad: float) -> list[tuple[Any, ...]]:
    """``n`` rows (sensor, t_ms, value, unit, precision) of one shape, some invalid."""
    rnd = random.Random(seed)
    rows: list[tuple[Any, ...]] = []
    t = T0
    for i in range(n):
        sensor = SENSORS[rnd.randrange(3 if mix == "floats" else len(SENSORS))]
        unit = UNITS[hash(sensor) % 2 * 2] if mix != "mixed" else rnd.choice(UNITS)
        t += 1000 if mix == "shift" else rnd.choice([0, 1000, 1000, 1000, 997, 5000, -3, 10**7])
        p: int | None = 2
        kind = rnd.random()
        v: Any
        if mix == "shift":
            # Steady, then noise: the estimate from a measurement of the steady
            # part is far off, so encode() has to search for a prefix that fits.
            sensor = "a"
            v = 21.5 if i < n // 2 else round(rnd.uniform(-1e9, 1e9), 2)
        elif mix == "floats" or kind < 0.6:
            v = round(20 + 5 * math.sin(i / 50) + rnd.gauss(0, 0.3), rnd.choice([1, 2, 2, 3]))
            p = rnd.choice([None, 1, 2, 2, 2, 3]) if mix == "mixed" else 2
            if rnd.random() < 0.05:
                v = (rnd.randrange(-(10**6), 10**6) + 0.5) / 100  # exact ties at p = 2
            if rnd.random() < 0.01:
                v = rnd.uniform(-1e14, 1e14)
        elif kind < 0.75:
            v = rnd.choice([0, 1, -7, 123456, MAX_SAFE_INT, -MAX_SAFE_INT, 2**40])
        elif kind < 0.85:
            v = rnd.random() < 0.5
        else:
            v = rnd.choice(["on", "off", "auto", "é" * rnd.randrange(1, 40)])
        if rnd.random() < bad:
            which = rnd.randrange(6)
            if which == 0:
                t = -5
            elif which == 1:
                v = math.nan
            elif which == 2:
                p = 10
            elif which == 3:
                sensor = "not an id!"
            elif which == 4:
                v = 1 / 3  # needs more than 9 decimals without a precision
                p = None
            else:
                p = True  # type: ignore[assignment]
            rows.append((sensor, t, v, unit, p))
            t = max(t, T0)
            continue
        rows.append((sensor, t, v, unit, p))
    return rows


def feed_new(enc_args: dict[str, Any], rows: list[tuple[Any, ...]], slices: list[int]
             ) -> tuple[list[bytes], list[int]]:
    """The pump's way: add_rows over slices, encode whenever it is full."""
    out: list[bytes] = []
    bad: list[int] = []
    enc = BatchEncoder(**enc_args)
    i, k = 0, 0
    while i < len(rows):
        stop = min(len(rows), i + slices[k % len(slices)])
        k += 1
        end = enc.add_rows(rows, i, stop, on_invalid=lambda j, e: bad.append(j))
        i = end
        if end < stop or enc.would_overflow():
            while len(enc):
                out.append(_JSON.encode(enc.encode("dev", len(out), session=3)))
            enc = BatchEncoder(**enc_args)
    while len(enc):
        out.append(_JSON.encode(enc.encode("dev", len(out), session=3)))
    return out, bad


def feed_old(enc_args: dict[str, Any], rows: list[tuple[Any, ...]]
             ) -> tuple[list[bytes], list[int]]:
    """The old pump's way, on the frozen encoder: add and would_overflow per row."""
    out: list[bytes] = []
    bad: list[int] = []
    enc = v1.BatchEncoder(**enc_args)
    for i, (sensor, t, v, unit, p) in enumerate(rows):
        try:
            enc.add(sensor, t, v, unit=unit, precision=p)
        except ConfigError:
            bad.append(i)
            continue
        if enc.would_overflow():
            while len(enc):
                out.append(_JSON.encode(enc.encode("dev", len(out), session=3)))
            enc = v1.BatchEncoder(**enc_args)
    while len(enc):
        out.append(_JSON.encode(enc.encode("dev", len(out), session=3)))
    return out, bad


@FIXED
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 3000),
    mix=st.sampled_from(["floats", "kinds", "mixed", "shift"]),
    bad=st.sampled_from([0.0, 0.0, 0.01, 0.2]),
    precision=st.sampled_from([None, 2]),
    max_bytes=st.sampled_from([4096, 6000, 16384, MAX_CONTENT_BYTES]),
    max_readings=st.sampled_from([1, 7, 500, MAX_BATCH_READINGS]),
    slices=st.lists(st.integers(1, 9000), min_size=1, max_size=4),
)
def test_add_rows_makes_the_old_encoders_contents_byte_for_byte(
    seed: int, n: int, mix: str, bad: float, precision: int | None, max_bytes: int,
    max_readings: int, slices: list[int],
) -> None:
    rows = random_rows(seed, n, mix, bad)
    args = {"precision": precision, "max_bytes": max_bytes, "max_readings": max_readings}
    assert feed_new(args, rows, slices) == feed_old(args, rows)


def test_add_rows_raises_at_an_invalid_row_without_on_invalid() -> None:
    rows = [("s", T0 + i, 1.5 + i, None, 2) for i in range(10)]
    rows[6] = ("s", -1, 1.0, None, 2)
    enc = BatchEncoder()
    with pytest.raises(ConfigError, match="t_ms"):
        enc.add_rows(rows)
    assert len(enc) == 6  # the rows before it, not it
    assert enc.add_rows(rows, 7) == 10
    assert [r.value for r in decode_batch(enc.encode("d", 0))] == [
        1.5 + i for i in range(10) if i != 6
    ]


def test_the_bench_series_encodes_to_the_old_bytes_and_decodes_the_same() -> None:
    rows = [(s, t, v, "Cel" if s == "s0" else None, 2) for s, t, v in regular_series(200_000)]
    new, _ = feed_new({}, rows, [8192])
    old, _ = feed_old({}, rows)
    assert new == old
    assert len(new) == 4  # three full contents of 65,536 readings and the rest
    # Golden: the same workload through the codec before issue #18 (readings_v1).
    digest = hashlib.sha256(b"".join(new)).hexdigest()
    assert digest == GOLDEN_BENCH_SERIES
    got = []
    for blob in new:
        batch = parse_batch(msgspec.json.decode(blob))
        readings = batch.readings()
        assert readings == v1.unpack(batch)
        with_identity = batch.readings(identity=True)
        assert with_identity == [
            msgspec.structs.replace(r, session=3, index=i) for i, r in enumerate(readings)
        ]
        got += readings
    by_sensor: dict[str, list[tuple[int, float]]] = {}
    for r in got:
        by_sensor.setdefault(r.sensor, []).append((r.t_ms, r.value))
    want: dict[str, list[tuple[int, float]]] = {}
    for s, t, v, _, _ in rows:
        want.setdefault(s, []).append((t, round(v, 2)))
    assert by_sensor == want


#: sha256 of the contents (compact JSON, concatenated) that the codec of commit
#: 32c5ad1 (before issue #18) made of 200,000 readings of ``regular_series``,
#: fed row by row with add() and would_overflow(), device "dev", session 3.
GOLDEN_BENCH_SERIES = "233427f2408a4ef5314468ffbab2e9378de2e16fc2e2f04b9f168693ebe0826f"


@FIXED
@given(seed=st.integers(0, 2**32), n=st.integers(1, 400),
       mix=st.sampled_from(["floats", "kinds", "mixed"]))
def test_decoding_gives_the_old_readings(seed: int, n: int, mix: str) -> None:
    rows = random_rows(seed, n, mix, 0.0)
    contents, _ = feed_old({"max_bytes": 4096}, rows)
    for blob in contents:
        batch = parse_batch(msgspec.json.decode(blob))
        assert batch.readings() == v1.unpack(batch)
        assert [(r.session, r.index) for r in batch.readings(identity=True)] == [
            (3, i) for i in range(sum(h.n for h in batch.series))
        ]
