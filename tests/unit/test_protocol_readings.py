"""The reading codec: exact values, the byte budget, strict decoding, density, speed.

Pure tests: no server, no event loop. Hypothesis runs derandomized, so every run
tries the same examples.
"""

from __future__ import annotations

import base64
import json
import math
import random
import time
import zlib
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxsync.errors import ConfigError, ProtocolError
from mxsync.protocol.readings import (
    MAX_BATCH_READINGS,
    MAX_RAW_BYTES,
    MAX_SERIES,
    MAX_STR_BYTES,
    MAX_T_MS,
    MIN_BATCH_BYTES,
    BatchEncoder,
    DeviceState,
    Reading,
    SensorMeta,
    Value,
    decode_batch,
    decode_device_state,
    decode_sensor_meta,
    decode_value,
    encode_value,
    parse_batch,
    to_content,
    validate_device_id,
    validate_precision,
    validate_sensor_id,
    validate_t_ms,
    validate_unit,
    validate_value,
)
from mxsync.protocol.types import MAX_CONTENT_BYTES, MAX_SAFE_INT

FIXED = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
T0 = 1_700_000_000_000
EXACT = Context(prec=1000, rounding=ROUND_HALF_EVEN)


def json_size(content: dict[str, Any]) -> int:
    return len(msgspec.json.encode(content))


def drain(enc: BatchEncoder, device: str = "dev1", seq: int = 0) -> list[dict[str, Any]]:
    out = []
    while len(enc):
        out.append(enc.encode(device, seq))
        seq += 1
    return out


def temperature(n: int, seed: int = 1, step_ms: int = 1000) -> list[tuple[int, float]]:
    """A slowly varying temperature with sensor noise, 2 decimals, regular times."""
    rnd = random.Random(seed)
    return [
        (T0 + i * step_ms, round(20 + 3 * math.sin(i / 600) + rnd.gauss(0, 0.05), 2))
        for i in range(n)
    ]


def assert_canonical_json(x: object) -> None:
    """Only what Synapse accepts: dict/list/str/bool and ints within 2**53."""
    if isinstance(x, dict):
        for k, v in x.items():
            assert type(k) is str
            assert_canonical_json(v)
    elif isinstance(x, list):
        for v in x:
            assert_canonical_json(v)
    else:
        assert type(x) in (str, bool, int), f"{type(x).__name__} in content"
        if type(x) is int:
            assert -MAX_SAFE_INT <= x <= MAX_SAFE_INT


# ---------------------------------------------------------------------------
# An independent packer written from docs/PROTOCOL.md section 3, so the tests
# check the spec and not only that the decoder mirrors the encoder.
# ---------------------------------------------------------------------------


def spec_varint(z: int) -> bytes:
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def spec_zigzag(x: int) -> int:
    return 2 * x if x >= 0 else -2 * x - 1


def spec_series(kind: str, times: list[int], values: list[Any], t0: int, p: int = 0) -> bytes:
    out = bytearray()
    prev_t, prev_d = t0, 0
    for i, t in enumerate(times):
        d = t - prev_t
        code = d if i < 2 else d - prev_d
        out += spec_varint(spec_zigzag(code))
        prev_t, prev_d = t, d
    if kind in ("int", "float"):
        prev = 0
        for v in values:
            m = v if kind == "int" else int(Decimal(repr(v)).scaleb(p))
            out += spec_varint(spec_zigzag(m - prev))
            prev = m
    elif kind == "bool":
        acc = 0
        for i, v in enumerate(values):
            acc |= int(v) << i
        out += acc.to_bytes((len(values) + 7) // 8, "little")
    else:
        for v in values:
            b = v.encode()
            out += spec_varint(len(b)) + b
    return bytes(out)


def spec_content(
    raw: bytes, series: list[dict[str, Any]], *, t0: int = T0, compress: bool = True, **extra: Any
) -> dict[str, Any]:
    data = zlib.compress(raw) if compress else raw
    content: dict[str, Any] = {
        "device": "dev1",
        "seq": 7,
        "t0_ms": t0,
        "series": series,
        "data": base64.b64encode(data).decode(),
    }
    if not compress:
        content["compression"] = "none"
    content.update(extra)
    return content


# ---------------------------------------------------------------------------
# Validation of arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good", ["t", "temp", "room1/temp", "urn:dev:ow:10e2073a01080063", "a.b-c_d", "9" * 128]
)
def test_valid_sensor_and_device_ids_are_accepted(good: str) -> None:
    assert validate_sensor_id(good) == good
    assert validate_device_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "-a", "/a", "a b", "a" * 129, "temp\n", "tëmp", "a#b", 5, None, b"temp"]
)
def test_invalid_sensor_and_device_ids_raise_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="sensor id"):
        validate_sensor_id(bad)
    with pytest.raises(ConfigError, match="device id"):
        validate_device_id(bad)
    enc = BatchEncoder()
    with pytest.raises(ConfigError):
        enc.add(bad, T0, 1)  # type: ignore[arg-type]
    assert len(enc) == 0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (math.nan, "not finite"),
        (math.inf, "not finite"),
        (-math.inf, "not finite"),
        (2**53, "2\\*\\*53"),
        (-(2**53), "2\\*\\*53"),
        ("x" * (MAX_STR_BYTES + 1), "bytes of UTF-8"),
        ("é" * 129, "bytes of UTF-8"),
        ("\ud800", "UTF-8"),
        (None, "type NoneType"),
        (b"x", "type bytes"),
        ([1], "type list"),
        (1 + 2j, "type complex"),
        (Decimal("1.5"), "type Decimal"),
    ],
)
def test_values_that_cannot_travel_exactly_raise_config_error(bad: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_value(bad)
    with pytest.raises(ConfigError, match=match):
        encode_value(bad)  # type: ignore[arg-type]
    enc = BatchEncoder(precision=2)
    with pytest.raises(ConfigError, match=match):
        enc.add("s", T0, bad)  # type: ignore[arg-type]
    assert len(enc) == 0


def test_bool_is_its_own_kind_not_an_int() -> None:
    assert validate_value(True) == "bool"
    assert validate_value(1) == "int"
    assert validate_value(1.0) == "float"
    assert validate_value("1") == "str"
    enc = BatchEncoder()
    for i, v in enumerate([True, 1, False, 0, 1.0]):
        enc.add("s", T0 + i, v)
    got = decode_batch(enc.encode("d", 0))
    assert [(type(r.value), r.value) for r in got] == [
        (bool, True),
        (bool, False),
        (int, 1),
        (int, 0),
        (float, 1.0),
    ]


def test_int_and_float_subclasses_travel_as_their_base_type() -> None:
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    class MyFloat(float):
        pass

    enc = BatchEncoder()
    enc.add("lvl", T0, Level.HIGH)
    enc.add("f", T0, MyFloat(2.5))
    got = decode_batch(enc.encode("d", 0))
    assert [(type(r.value), r.value) for r in got] == [(int, 3), (float, 2.5)]


@pytest.mark.parametrize("bad", [-1, 10, 1.5, True, "2"])
def test_precision_outside_0_to_9_raises_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="precision"):
        validate_precision(bad)
    with pytest.raises(ConfigError, match="precision"):
        BatchEncoder(precision=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision"):
        BatchEncoder().add("s", T0, 1.5, precision=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision"):
        encode_value(1.5, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, MAX_T_MS + 1, 1.7e12, True, "1700000000000", None])
def test_times_outside_1970_to_2200_or_not_int_raise_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="t_ms"):
        validate_t_ms(bad)
    enc = BatchEncoder()
    with pytest.raises(ConfigError, match="t_ms"):
        enc.add("s", bad, 1)  # type: ignore[arg-type]
    assert len(enc) == 0


def test_time_limits_are_inclusive() -> None:
    enc = BatchEncoder()
    enc.add("s", 0, 1)
    enc.add("s", MAX_T_MS, 2)
    enc.add("s", 0, 3)
    got = decode_batch(enc.encode("d", 0))
    assert [r.t_ms for r in got] == [0, MAX_T_MS, 0]


@pytest.mark.parametrize("bad", ["", "u" * 33, "°" * 17, "C\n", "\x00", 5])
def test_invalid_units_raise_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="unit"):
        validate_unit(bad)
    with pytest.raises(ConfigError, match="unit"):
        BatchEncoder().add("s", T0, 1, unit=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [None, "Cel", "%RH", "m/s2", "°C", 'in"', "u" * 32])
def test_units_round_trip(good: str | None) -> None:
    assert validate_unit(good) == good
    enc = BatchEncoder()
    enc.add("s", T0, 1, unit=good)
    assert decode_batch(enc.encode("d", 0))[0].unit == good


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_bytes": MIN_BATCH_BYTES - 1}, "max_bytes"),
        ({"max_bytes": MAX_CONTENT_BYTES + 1}, "max_bytes"),
        ({"max_readings": 0}, "max_readings"),
        ({"max_readings": MAX_BATCH_READINGS + 1}, "max_readings"),
        ({"compression_level": 10}, "compression_level"),
    ],
)
def test_encoder_settings_are_checked(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BatchEncoder(**kwargs)


@pytest.mark.parametrize(
    ("device", "seq", "session"),
    [("bad id", 0, None), ("d", -1, None), ("d", 2**53, None), ("d", 0, -1), ("d", True, None)],
)
def test_encode_checks_device_seq_and_session(device: str, seq: int, session: int | None) -> None:
    enc = BatchEncoder()
    enc.add("s", T0, 1)
    with pytest.raises(ConfigError):
        enc.encode(device, seq, session=session)
    assert len(enc) == 1


def test_encode_of_an_empty_buffer_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="no readings"):
        BatchEncoder().encode("d", 0)


# ---------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------


@FIXED
@given(
    v=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(min_value=-1e7, max_value=1e7),
        st.floats(min_value=-(2.0**53), max_value=2.0**53),
    ),
    p=st.integers(0, 9),
)
def test_a_float_comes_back_as_round_of_it_to_its_precision(v: float, p: int) -> None:
    exact = Decimal(v).scaleb(p, EXACT).to_integral_value(context=EXACT)  # ties to even
    try:
        kind, m, exp = encode_value(v, p)
    except ConfigError as e:
        assert "2**53" in str(e)
        assert abs(exact) > MAX_SAFE_INT
        return
    assert m == exact
    assert (kind, exp) == ("float", p)
    assert isinstance(m, int) and abs(m) <= MAX_SAFE_INT
    back = decode_value("float", m, exp)
    assert type(back) is float
    assert back == round(v, p)


@FIXED
@given(m=st.integers(2**51, 2**53 + 2**50), p=st.integers(1, 9), sign=st.sampled_from([1, -1]))
def test_mantissas_near_2_53_are_the_nearest_integer(m: int, p: int, sign: int) -> None:
    # Here floats are further apart than 10**-p, so several mantissas would give
    # the same float back; the wire must still carry the nearest one.
    v = sign * m / 10**p
    exact = Decimal(v).scaleb(p, EXACT).to_integral_value(context=EXACT)
    try:
        wire = encode_value(v, p).wire
    except ConfigError:
        assert abs(exact) > MAX_SAFE_INT
        return
    assert wire == exact
    assert decode_value("float", wire, p) == round(v, p)


@FIXED
@given(m=st.integers(-MAX_SAFE_INT, MAX_SAFE_INT), q=st.integers(0, 9))
def test_without_precision_a_short_decimal_float_comes_back_identical(m: int, q: int) -> None:
    v = m / 10**q  # the float nearest to m * 10**-q: at most 9 decimals in repr
    try:
        kind, wire, exp = encode_value(v)
    except ConfigError as e:
        # repr(v) may need more digits than m has (v is only the nearest float),
        # or the shortest decimal may be beyond 2**53 once scaled.
        assert "decimals" in str(e) or "2**53" in str(e)
        return
    assert decode_value(kind, wire, exp) == v
    enc = BatchEncoder()
    enc.add("s", T0, v)
    assert decode_batch(enc.encode("d", 0))[0].value == v


@pytest.mark.parametrize(
    ("v", "p", "want"),
    [
        (0.1 + 0.2, 2, 0.3),
        (0.1 + 0.2, 1, 0.3),
        (0.1 + 0.2, 9, 0.3),
        (2.675, 2, 2.67),  # binary 2.67499999...: round() and the codec agree
        (0.125, 2, 0.12),  # an exact tie goes to even
        (0.375, 2, 0.38),
        (-1.005, 2, -1.0),
        (1e-10, 9, 0.0),
        (-0.0, 3, 0.0),
        (123456.789, 0, 123457.0),
        (9007199254740991.0, 0, 9007199254740991.0),  # mantissa 2**53 - 1
        (90071992547409.91, 2, 90071992547409.91),  # mantissa 2**53 - 1
        (-90071992547409.91, 2, -90071992547409.91),
    ],
)
def test_classic_rounding_cases(v: float, p: int, want: float) -> None:
    assert round(v, p) == want
    enc = BatchEncoder()
    enc.add("s", T0, v, precision=p)
    (got,) = decode_batch(enc.encode("d", 0))
    assert type(got.value) is float and got.value == want


def test_a_float_that_needs_more_than_9_decimals_needs_a_precision() -> None:
    enc = BatchEncoder()
    with pytest.raises(ConfigError, match="pass precision="):
        enc.add("s", T0, 1 / 3)
    with pytest.raises(ConfigError, match="decimals"):
        enc.add("s", T0, 0.1 + 0.2)
    enc.add("s", T0, 1 / 3, precision=4)
    enc.add("s", T0 + 1, 1e-9)
    enc.add("s", T0 + 2, 1.5e-7)
    assert [r.value for r in decode_batch(enc.encode("d", 0))] == [0.3333, 1e-9, 1.5e-7]


def test_floats_too_large_for_their_precision_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="2\\*\\*53"):
        encode_value(1e16)
    with pytest.raises(ConfigError, match="2\\*\\*53"):
        encode_value(1e13, 4)
    assert decode_value(*encode_value(1e13, 2)) == 1e13


def test_series_with_mixed_decimals_share_one_exponent_exactly() -> None:
    # Without a precision each value keeps its own shortest decimal; the series
    # takes the largest exponent and scales the others, exactly.
    values = [21.5, 21.25, 21.0, 1.125, 7.0, 0.001, 1234567.5]
    enc = BatchEncoder()
    for i, v in enumerate(values):
        enc.add("s", T0 + i, v)
    content = enc.encode("d", 0)
    assert [s["precision"] for s in content["series"]] == [3]
    assert [r.value for r in decode_batch(content)] == values


def test_a_scale_up_that_would_pass_2_53_opens_a_second_series() -> None:
    enc = BatchEncoder()
    enc.add("s", T0, 9e15)  # mantissa 9e15 at exponent 0
    enc.add("s", T0 + 1, 0.5)  # needs exponent 1: 9e16 would not fit
    enc.add("s", T0 + 2, 0.25)  # exponent 2, joins the second series
    content = enc.encode("d", 0)
    assert [(s["sensor"], s.get("precision", 0)) for s in content["series"]] == [
        ("s", 0),
        ("s", 2),
    ]
    assert [r.value for r in decode_batch(content)] == [9e15, 0.5, 0.25]


def test_extreme_ints_round_trip() -> None:
    values = [MAX_SAFE_INT, -MAX_SAFE_INT, 0, MAX_SAFE_INT, -1, 1, -MAX_SAFE_INT]
    enc = BatchEncoder()
    for i, v in enumerate(values):
        enc.add("s", MAX_T_MS if i % 2 else 0, v)
    got = decode_batch(enc.encode("d", 0))
    assert [r.value for r in got] == values
    assert [r.t_ms for r in got] == [MAX_T_MS if i % 2 else 0 for i in range(len(values))]


# ---------------------------------------------------------------------------
# Batches round-trip
# ---------------------------------------------------------------------------

SENSORS = ["a", "temp", "room1/hum", "x" * 128]
UNITS = [None, "Cel", "°C", '"']
short_floats = st.builds(
    lambda m, q: m / 10**q, st.integers(-(10**12), 10**12), st.integers(0, 9)
).filter(lambda v: len(repr(v).partition(".")[2]) <= 9 and "e" not in repr(v))
values = st.one_of(
    st.integers(-MAX_SAFE_INT, MAX_SAFE_INT),
    st.integers(-1000, 1000),
    st.booleans(),
    st.text(max_size=40),
    st.text(alphabet="ab", max_size=3),
    short_floats,
)
readings = st.lists(
    st.tuples(
        st.sampled_from(SENSORS),
        st.one_of(st.integers(0, MAX_T_MS), st.integers(T0, T0 + 10_000)),
        values,
        st.sampled_from(UNITS),
    ),
    min_size=1,
    max_size=300,
)


def by_series(rows: list[tuple[str, int, Any, str | None]]) -> dict[Any, list[Any]]:
    """Order is kept per (sensor, kind, unit): that is what the codec promises."""
    out: dict[Any, list[Any]] = defaultdict(list)
    for sensor, t, v, unit in rows:
        out[(sensor, type(v), unit)].append((t, v))
    return dict(out)


@FIXED
@given(rows=readings, max_bytes=st.sampled_from([MIN_BATCH_BYTES, 10_000, MAX_CONTENT_BYTES]))
def test_any_readings_round_trip_exactly_within_the_budget(
    rows: list[tuple[str, int, Any, str | None]], max_bytes: int
) -> None:
    enc = BatchEncoder(max_bytes=max_bytes)
    for sensor, t, v, unit in rows:
        enc.add(sensor, t, v, unit=unit)
    contents = drain(enc, "dev-9", 41)
    got: list[Reading] = []
    for seq, content in enumerate(contents, start=41):
        assert json_size(content) <= max_bytes
        assert_canonical_json(content)
        batch = decode_batch(content)
        assert {(r.device, r.seq) for r in batch} == {("dev-9", seq)}
        got += batch
    assert by_series([(r.sensor, r.t_ms, r.value, r.unit) for r in got]) == by_series(rows)


@FIXED
@given(
    rows=st.lists(
        st.tuples(st.integers(T0, T0 + 10**6), st.floats(-1e6, 1e6)), min_size=1, max_size=200
    ),
    p=st.integers(0, 9),
)
def test_batches_of_floats_come_back_rounded_to_the_precision(
    rows: list[tuple[int, float]], p: int
) -> None:
    enc = BatchEncoder(precision=p)
    for t, v in rows:
        enc.add("f", t, v)
    got = [r for c in drain(enc) for r in decode_batch(c)]
    assert [(r.t_ms, r.value) for r in got] == [(t, round(v, p)) for t, v in rows]
    assert all(type(r.value) is float for r in got)


def test_extend_adds_readings_and_ignores_their_device() -> None:
    enc = BatchEncoder()
    src = [Reading("t", T0 + i, i * 0.5, "Cel", device="other", seq=3) for i in range(5)]
    enc.extend(src)
    got = decode_batch(enc.encode("dev1", 0))
    assert got == [Reading("t", T0 + i, i * 0.5, "Cel", device="dev1", seq=0) for i in range(5)]


def test_session_is_carried_and_version_1_is_implicit() -> None:
    enc = BatchEncoder()
    enc.add("s", T0, 1)
    content = enc.encode("d", 5, session=12)
    assert content["session"] == 12 and "v" not in content
    assert parse_batch({**content, "v": 1}).session == 12
    assert parse_batch(content).seq == 5


# ---------------------------------------------------------------------------
# The byte budget, the readings cap, the series cap
# ---------------------------------------------------------------------------


def pathological_rows(n: int, seed: int) -> list[tuple[str, int, Any, str]]:
    """Hard to compress and as large as the limits allow: long ids, units that
    JSON-escape to twice their size, 256-byte random strings, 2**53 swings,
    random times over 230 years, thousands of series."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        sensor = "s" * 120 + str(rnd.randrange(3000))
        kind = rnd.randrange(4)
        if kind == 0:
            v: Any = rnd.choice([-MAX_SAFE_INT, MAX_SAFE_INT])
        elif kind == 1:
            v = rnd.uniform(-1e6, 1e6)
        elif kind == 2:
            v = rnd.random() < 0.5
        else:
            v = rnd.randbytes(170).decode("latin-1")  # 170 chars, about 256 bytes UTF-8
            v = v.encode()[:256].decode("utf-8", "ignore")
        rows.append((sensor, rnd.randrange(0, MAX_T_MS + 1), v, '"' * 32))
    return rows


@pytest.mark.parametrize("obey", [True, False], ids=["flush-when-told", "never-flush"])
@pytest.mark.parametrize("max_bytes", [MIN_BATCH_BYTES, MAX_CONTENT_BYTES])
def test_pathological_data_never_exceeds_the_budget(obey: bool, max_bytes: int) -> None:
    rows = pathological_rows(3000, seed=max_bytes)
    enc = BatchEncoder(max_bytes=max_bytes, precision=9)
    contents: list[dict[str, Any]] = []
    for sensor, t, v, unit in rows:
        enc.add(sensor, t, v, unit=unit)
        if obey and enc.would_overflow():
            contents += drain(enc, "d" * 128, len(contents))
    contents += drain(enc, "d" * 128, len(contents))
    assert max(json_size(c) for c in contents) <= max_bytes
    got = [r for c in contents for r in decode_batch(c)]
    want: list[tuple[str, int, Any, str | None]] = [
        (s, t, round(v, 9) if type(v) is float else v, u) for s, t, v, u in rows
    ]
    assert by_series([(r.sensor, r.t_ms, r.value, r.unit) for r in got]) == by_series(want)
    for c in contents:
        assert_canonical_json(c)


def test_a_publisher_that_flushes_when_told_fills_events_near_the_budget() -> None:
    enc = BatchEncoder(precision=2)
    sizes, counts = [], []
    rnd = random.Random(3)
    for i in range(200_000):
        enc.add(f"s{i % 7}", T0 + i * 100, round(rnd.gauss(20, 5), 2))
        if enc.would_overflow():
            n = len(enc)
            (content,) = drain(enc)  # one content: the estimate was right
            sizes.append(json_size(content))
            counts.append(n)
    assert len(sizes) >= 3
    assert all(0.9 * MAX_CONTENT_BYTES < s <= MAX_CONTENT_BYTES for s in sizes), sizes
    assert min(counts) > 10_000


def test_max_readings_caps_a_content() -> None:
    enc = BatchEncoder(max_readings=1000)
    for t, v in temperature(2500):
        enc.add("t", t, v)
        if enc.would_overflow():
            assert len(enc) == 1000
            assert len(decode_batch(enc.encode("d", 0))) == 1000
    assert len(decode_batch(enc.encode("d", 1))) == 500


def test_more_sensors_than_a_content_may_list_are_spread_over_contents() -> None:
    enc = BatchEncoder()
    for i in range(MAX_SERIES + 500):
        enc.add(f"s{i}", T0, i)
    contents = drain(enc)
    assert all(len(c["series"]) <= MAX_SERIES for c in contents)
    got = [r for c in contents for r in decode_batch(c)]
    assert [(r.sensor, r.value) for r in got] == [(f"s{i}", i) for i in range(MAX_SERIES + 500)]


def test_estimated_size_bounds_the_content_until_measured() -> None:
    enc = BatchEncoder()
    rnd = random.Random(9)
    for _ in range(500):
        enc.add("r", rnd.randrange(MAX_T_MS), rnd.randrange(-MAX_SAFE_INT, MAX_SAFE_INT))
        assert not enc.would_overflow()
    estimate = enc.estimated_size()
    assert json_size(enc.encode("d" * 128, MAX_SAFE_INT, session=MAX_SAFE_INT)) <= estimate


def test_series_of_one_sensor_with_differing_kinds_or_units_stay_apart() -> None:
    enc = BatchEncoder()
    enc.add("s", T0, 1)
    enc.add("s", T0 + 1, 1.5)
    enc.add("s", T0 + 2, 2, unit="Cel")
    enc.add("s", T0 + 3, 3)
    content = enc.encode("d", 0)
    assert [(s["kind"], s.get("unit")) for s in content["series"]] == [
        ("int", None),
        ("float", None),
        ("int", "Cel"),
    ]
    assert [(r.t_ms, r.value) for r in decode_batch(content)] == [
        (T0, 1),
        (T0 + 3, 3),
        (T0 + 1, 1.5),
        (T0 + 2, 2),
    ]


# ---------------------------------------------------------------------------
# Density and speed
# ---------------------------------------------------------------------------


def bytes_per_reading(rows: list[tuple[str, int, Any]], **kwargs: Any) -> float:
    enc = BatchEncoder(**kwargs)
    for sensor, t, v in rows:
        enc.add(sensor, t, v)
    (content,) = drain(enc)
    assert len(decode_batch(content)) == len(rows)
    return json_size(content) / len(rows)


def test_bytes_per_reading() -> None:
    rnd = random.Random(4)
    n = 3600  # one hour at 1 Hz
    cases: dict[str, list[tuple[str, int, Any]]] = {
        "float 1 Hz, 2 decimals, temperature": [("temp", t, v) for t, v in temperature(n)],
        "int counter": [
            ("count", T0 + i * 1000, 1000 + 3 * i + rnd.randint(0, 2)) for i in range(n)
        ],
        "int 12-bit ADC noise": [("adc", T0 + i * 1000, rnd.randint(0, 4095)) for i in range(n)],
        "bool, 2% changes": [("door", T0 + i * 1000, rnd.random() < 0.02) for i in range(n)],
    }
    mixed: list[tuple[str, int, Any]] = []
    for i in range(n // 6):
        t = T0 + i * 10_000
        mixed += [(f"room{k}/temp", t, round(20 + k + rnd.gauss(0, 0.05), 2)) for k in range(3)]
        mixed.append(("room0/hum", t, rnd.randint(40, 45)))
        mixed.append(("door", t, rnd.random() < 0.1))
        mixed.append(("state", t, rnd.choice(["idle", "heating", "cooling"])))
    cases["mixed 6 sensors every 10 s"] = mixed
    result = {name: bytes_per_reading(rows, precision=2) for name, rows in cases.items()}
    for name, b in result.items():
        print(f"bytes/reading  {name:40s} {b:6.3f}")
    assert result["float 1 Hz, 2 decimals, temperature"] <= 4.0
    assert result["bool, 2% changes"] <= 0.5
    assert result["mixed 6 sensors every 10 s"] <= 4.0


def test_100k_readings_encode_and_decode_well_under_a_second() -> None:
    rnd = random.Random(6)
    rows = [
        (f"s{k}", T0 + i * 100, round(20 + k + math.sin(i / 500) + rnd.gauss(0, 0.05), 2))
        for i in range(10_000)
        for k in range(10)
    ]
    start = time.perf_counter()
    enc = BatchEncoder(precision=2)
    contents: list[dict[str, Any]] = []
    for sensor, t, v in rows:
        enc.add(sensor, t, v)
        if enc.would_overflow():
            contents += drain(enc, "d", len(contents))
    contents += drain(enc, "d", len(contents))
    encoded = time.perf_counter()
    got = [r for c in contents for r in decode_batch(c)]
    decoded = time.perf_counter()
    print(
        f"100,000 readings: encode {encoded - start:.3f} s, decode {decoded - encoded:.3f} s,"
        f" {len(contents)} contents, {sum(map(json_size, contents)) / len(rows):.3f} B/reading"
    )
    assert len(got) == len(rows)
    # Generous bounds so a loaded CI machine does not flake; typical: 0.2 s, 0.05 s.
    assert encoded - start < 1.5
    assert decoded - encoded < 1.0


# ---------------------------------------------------------------------------
# Strict decoding
# ---------------------------------------------------------------------------


def valid_content() -> dict[str, Any]:
    enc = BatchEncoder(precision=1)
    for i in range(40):
        enc.add("temp", T0 + i * 1000, 20 + i / 10, unit="Cel")
        enc.add("door", T0 + i * 1000, i % 7 == 0)
        enc.add("mode", T0 + i * 1000, "auto" if i % 3 else "manual")
        enc.add("count", T0 + i * 1000, i * 1000)
    return enc.encode("dev1", 3)


def test_spec_packer_and_codec_agree() -> None:
    times = [T0, T0 + 1000, T0 + 2000, T0 + 2500, T0 - 10]
    raw = (
        spec_series("float", times, [21.5, 21.52, -3.0, 0.01, 1e6], T0, 2)
        + spec_series("bool", times[:3], [True, False, True], T0)
        + spec_series("str", times[:2], ["on", "ünïcode"], T0)
        + spec_series("int", times[:2], [MAX_SAFE_INT, -MAX_SAFE_INT], T0)
    )
    series = [
        {"sensor": "t", "kind": "float", "n": 5, "precision": 2},
        {"sensor": "b", "kind": "bool", "n": 3},
        {"sensor": "s", "kind": "str", "n": 2},
        {"sensor": "i", "kind": "int", "n": 2},
    ]
    for compress in (True, False):
        got = decode_batch(spec_content(raw, series, compress=compress))
        assert [(r.sensor, r.t_ms, r.value) for r in got] == [
            ("t", T0, 21.5),
            ("t", T0 + 1000, 21.52),
            ("t", T0 + 2000, -3.0),
            ("t", T0 + 2500, 0.01),
            ("t", T0 - 10, 1e6),
            ("b", T0, True),
            ("b", T0 + 1000, False),
            ("b", T0 + 2000, True),
            ("s", T0, "on"),
            ("s", T0 + 1000, "ünïcode"),
            ("i", T0, MAX_SAFE_INT),
            ("i", T0 + 1000, -MAX_SAFE_INT),
        ]
    enc = BatchEncoder(precision=2, compression_level=0)
    for sensor, t, v in [("t", times[i], x) for i, x in enumerate([21.5, 21.52, -3.0, 0.01, 1e6])]:
        enc.add(sensor, t, v)
    for t, b in zip(times[:3], [True, False, True], strict=True):
        enc.add("b", t, b)
    enc.add("s", times[0], "on")
    enc.add("s", times[1], "ünïcode")
    enc.add("i", times[0], MAX_SAFE_INT)
    enc.add("i", times[1], -MAX_SAFE_INT)
    content = enc.encode("dev1", 7)
    assert base64.b64decode(content["data"]) == raw


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(c: dict[str, Any]) -> dict[str, Any]:
        target: Any = c
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return c

    return mutate


def _del(key: str) -> Any:
    def mutate(c: dict[str, Any]) -> dict[str, Any]:
        del c[key]
        return c

    return mutate


def _raw(transform: Any, compress: bool = True) -> Any:
    def mutate(c: dict[str, Any]) -> dict[str, Any]:
        raw = zlib.decompress(base64.b64decode(c["data"]))
        raw = transform(raw)
        c["data"] = base64.b64encode(zlib.compress(raw) if compress else raw).decode()
        if not compress:
            c["compression"] = "none"
        return c

    return mutate


def _data(data: bytes) -> Any:
    return _set(("data",), base64.b64encode(data).decode())


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (_set(("v",), 2), "unsupported readings version 2"),
        (_set(("v",), "1"), "version"),
        (_set(("v",), True), "version"),
        (_del("device"), "device"),
        (_set(("device",), "bad id"), "device id"),
        (_set(("seq",), -1), "seq"),
        (_set(("seq",), 1.0), "int"),
        (_set(("seq",), 2**53), "seq"),
        (_set(("seq",), 2**70), "seq"),
        (_set(("session",), "x"), "session"),
        (_set(("t0_ms",), MAX_T_MS + 1), "t0_ms"),
        (_set(("t0_ms",), -5), "t0_ms"),
        (_set(("series",), []), "series"),
        (_set(("series",), {}), "series"),
        (_set(("series", 0, "kind"), "double"), "kind"),
        (_set(("series", 0, "n"), 0), "n"),
        (_set(("series", 3, "n"), 41), "ends inside"),
        (_set(("series", 3, "n"), 39), "left over"),
        (_set(("series", 0, "n"), MAX_BATCH_READINGS), "at most 65536 readings"),
        (_set(("series", 0, "precision"), 10), "precision"),
        (_set(("series", 1, "precision"), 1), "no precision"),
        (_set(("series", 0, "unit"), ""), "unit"),
        (_set(("series", 0, "sensor"), 7), "sensor"),
        (_set(("series",), [{"sensor": "x", "kind": "int", "n": 1}] * (MAX_SERIES + 1)), "series"),
        (_set(("compression",), "gzip"), "compression"),
        (_set(("data",), "not base64!"), "base64"),
        (_set(("data",), "AAA"), "base64"),
        (_set(("data",), 5), "data"),
        (_set(("data",), "A" * (MAX_CONTENT_BYTES * 2)), "at most"),
        (_data(b"\x78\x9c garbage"), "corrupt zlib"),
        (_data(zlib.compress(b"\x00" * 10)[:4]), "truncated"),
        (_data(zlib.compress(b"\x00" * 10)[:-6]), "truncated"),
        (_data(zlib.compress(b"\x00" * 10) + b"x"), "after the end"),
        (_data(zlib.compress(b"\x00" * (MAX_RAW_BYTES + 1), 9)), "more than"),
        (_set(("compression",), "none"), "left over|ends inside|range|UTF-8|padding|str length"),
        (_raw(lambda r: r + b"\x00"), "left over"),
        (_raw(lambda r: r[:-1]), "ends inside"),
        (_raw(lambda r: b"\xff" * 11 + r), "longer than 10 bytes"),
        (_raw(lambda r: spec_varint(2 * MAX_T_MS) + r[1:]), "outside 1970..2200"),
    ],
)
def test_malformed_readings_content_raises_protocol_error(mutate: Any, match: str) -> None:
    content = mutate(valid_content())
    with pytest.raises(ProtocolError, match=match):
        decode_batch(content)


@pytest.mark.parametrize(
    ("raw", "series", "match"),
    [
        (
            spec_varint(0) + spec_varint(spec_zigzag(MAX_SAFE_INT + 1)),
            {"kind": "int", "n": 1},
            "beyond",
        ),
        (
            spec_varint(0) * 2 + spec_varint(spec_zigzag(MAX_SAFE_INT)) * 2,
            {"kind": "float", "n": 2, "precision": 1},
            "beyond",
        ),
        (spec_varint(0) + b"\x03", {"kind": "bool", "n": 1}, "padding bits"),
        (spec_varint(0), {"kind": "bool", "n": 1}, "ends inside"),
        (spec_varint(0) + spec_varint(2) + b"\xff\xfe", {"kind": "str", "n": 1}, "UTF-8"),
        (spec_varint(0) + spec_varint(300) + b"x" * 300, {"kind": "str", "n": 1}, "str length"),
        (spec_varint(0) + spec_varint(5) + b"abc", {"kind": "str", "n": 1}, "str length"),
        (spec_varint(0) + b"\x80", {"kind": "int", "n": 1}, "ends inside a varint"),
        (spec_varint(0), {"kind": "int", "n": 1}, "ends inside"),
        (spec_varint(spec_zigzag(-T0 - 1)) + spec_varint(0), {"kind": "int", "n": 1}, "1970"),
    ],
)
def test_malformed_packed_columns_raise_protocol_error(
    raw: bytes, series: dict[str, Any], match: str
) -> None:
    for compress in (True, False):
        content = spec_content(raw, [{"sensor": "x", **series}], compress=compress)
        with pytest.raises(ProtocolError, match=match):
            decode_batch(content)


def test_a_decompression_bomb_is_refused_quickly() -> None:
    bomb = zlib.compress(b"\x00" * (64 << 20), 9)  # 64 MiB of zeros in about 64 KB
    bomb = bomb[:40_000]  # a truncated bomb still inflates far past the cap
    content = valid_content()
    content["data"] = base64.b64encode(bomb).decode()
    start = time.perf_counter()
    with pytest.raises(ProtocolError, match="more than"):
        decode_batch(content)
    assert time.perf_counter() - start < 0.5


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["dev1", "temp", "int", "float", "bool", "str", "zlib", "none", "AAAA"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
content_keys = st.sampled_from(
    [
        "v",
        "device",
        "seq",
        "session",
        "t0_ms",
        "compression",
        "series",
        "data",
        "kind",
        "online",
        "since_ms",
        "last",
        "last_exp",
        "last_t_ms",
        "precision",
        "unit",
    ]
)
random_contents = st.one_of(
    json_values,
    st.dictionaries(st.one_of(content_keys, st.text(max_size=8)), json_values, max_size=10),
)


@FIXED
@given(content=random_contents)
def test_random_json_only_ever_raises_protocol_error(content: Any) -> None:
    for decode in (decode_batch, decode_sensor_meta, decode_device_state):
        try:
            decode(content)
        except ProtocolError:
            pass


@st.composite
def mutated_contents(draw: st.DrawFn) -> dict[str, Any]:
    content = valid_content()
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["field", "series", "delete", "raw", "b64"]))
        if how == "field":
            content[draw(content_keys)] = draw(json_values)
        elif how == "series" and isinstance(content.get("series"), list) and content["series"]:
            series = content["series"][draw(st.integers(0, len(content["series"]) - 1))]
            if not isinstance(series, dict):
                continue
            key = draw(st.sampled_from(["sensor", "kind", "n", "precision", "unit", "extra"]))
            series[key] = draw(json_values | st.integers(-3, 200))
        elif how == "delete" and content:
            del content[draw(st.sampled_from(sorted(content)))]
        elif how == "raw" and isinstance(content.get("data"), str):
            try:
                raw = bytearray(zlib.decompress(base64.b64decode(content["data"])))
            except Exception:
                raw = bytearray(b"\x00")
            for _ in range(draw(st.integers(1, 4))):
                op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
                i = draw(st.integers(0, max(0, len(raw) - 1)))
                if op == "flip" and raw:
                    raw[i] ^= 1 << draw(st.integers(0, 7))
                elif op == "insert":
                    raw[i:i] = draw(st.binary(min_size=1, max_size=12))
                elif op == "delete" and raw:
                    del raw[i]
                else:
                    del raw[i:]
            compress = draw(st.booleans())
            data = zlib.compress(bytes(raw)) if compress else bytes(raw)
            content["data"] = base64.b64encode(data).decode()
            content["compression"] = "zlib" if compress else "none"
        elif how == "b64" and isinstance(content.get("data"), str):
            blob = bytearray(base64.b64decode(content["data"]))
            if blob:
                i = draw(st.integers(0, len(blob) - 1))
                blob[i] ^= draw(st.integers(1, 255))
            content["data"] = base64.b64encode(bytes(blob)).decode()
    return content


@FIXED
@given(content=mutated_contents())
def test_mutated_contents_decode_or_raise_protocol_error(content: dict[str, Any]) -> None:
    try:
        got = decode_batch(content)
    except ProtocolError:
        return
    assert 0 < len(got) <= MAX_BATCH_READINGS
    for r in got:
        assert 0 <= r.t_ms <= MAX_T_MS
        assert type(r.value) in (int, float, bool, str)
        if type(r.value) is int:
            assert abs(r.value) <= MAX_SAFE_INT


# ---------------------------------------------------------------------------
# Sensor and device state
# ---------------------------------------------------------------------------


@FIXED
@given(v=values | st.floats(-1e9, 1e9), p=st.integers(0, 9))
def test_encode_value_round_trips_through_json(v: Value, p: int) -> None:
    try:
        enc = encode_value(v, p)
    except ConfigError:
        assert type(v) is float  # only floats may need a smaller precision
        return
    wire = json.loads(json.dumps(enc.wire))  # what a homeserver hands back
    back = decode_value(enc.kind, wire, enc.exp)
    assert type(back) is type(v)
    assert back == (round(v, p) if type(v) is float else v)


@pytest.mark.parametrize(
    ("kind", "wire", "exp", "match"),
    [
        ("double", 1, 0, "kind"),
        ("float", 1.5, 1, "int"),
        ("float", 2**53, 1, "range"),
        ("float", 1, 10, "exponent"),
        ("int", 1, 1, "exponent 0"),
        ("int", True, 0, "int"),
        ("bool", 1, 0, "true or false"),
        ("str", 5, 0, "str"),
        ("str", "x" * 257, 0, "bytes"),
    ],
)
def test_decode_value_rejects_bad_wire_values(kind: str, wire: Any, exp: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_value(kind, wire, exp)


def test_sensor_meta_carries_the_last_value_exactly() -> None:
    reading = Reading("room1/temp", T0, 0.1 + 0.2, unit="Cel", device="dev1")
    meta = SensorMeta.from_reading(reading, precision=2, name="Room 1")
    content = to_content(meta)
    assert content == {
        "kind": "float",
        "device": "dev1",
        "name": "Room 1",
        "unit": "Cel",
        "precision": 2,
        "last": 30,
        "last_exp": 2,
        "last_t_ms": T0,
    }
    assert_canonical_json(content)
    back = decode_sensor_meta(json.loads(json.dumps(content)))
    assert back == meta and back.last_value() == 0.3
    assert decode_sensor_meta({"kind": "bool"}).last_value() is None
    for v in (True, 7, "open"):
        meta = SensorMeta.from_reading(Reading("s", T0, v))
        assert decode_sensor_meta(to_content(meta)).last_value() == v


@pytest.mark.parametrize(
    "content",
    [
        {"kind": "float", "last": 1.5, "last_t_ms": T0},
        {"kind": "float", "last": 15, "last_exp": 10, "last_t_ms": T0},
        {"kind": "int", "last": 15, "last_exp": 1, "last_t_ms": T0},
        {"kind": "bool", "last": 1, "last_t_ms": T0},
        {"kind": "int", "last": 1},
        {"kind": "int", "last_t_ms": T0},
        {"kind": "int", "precision": 2},
        {"kind": "int", "unit": ""},
        {"kind": "int", "device": "a b"},
        {"kind": "int", "name": "n" * 257},
        {"kind": "float", "last": 1, "last_t_ms": MAX_T_MS + 1},
        {"kind": "temperature"},
        {"v": 2, "kind": "int"},
        {},
        [],
    ],
)
def test_malformed_sensor_meta_raises_protocol_error(content: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_sensor_meta(content)


def test_device_state_birth_and_last_will_round_trip() -> None:
    birth = DeviceState(
        online=True, since_ms=T0, heartbeat_ms=30_000, session=4, description="boiler room"
    )
    will = DeviceState(online=False, since_ms=T0 + 5, session=4, last_seq=17, reason="last-will")
    for state in (birth, will):
        content = to_content(state)
        assert_canonical_json(content)
        assert decode_device_state(json.loads(json.dumps(content))) == state
    assert to_content(will) == {
        "online": False,
        "since_ms": T0 + 5,
        "session": 4,
        "last_seq": 17,
        "reason": "last-will",
    }


@pytest.mark.parametrize(
    "content",
    [
        {"online": 1, "since_ms": T0},
        {"online": True},
        {"online": True, "since_ms": -1},
        {"online": True, "since_ms": T0, "heartbeat_ms": -1},
        {"online": True, "since_ms": T0, "last_seq": 2**53},
        {"online": True, "since_ms": T0, "reason": ""},
        {"online": True, "since_ms": T0, "reason": "x" * 65},
        {"online": True, "since_ms": T0, "description": "d" * 1025},
        {"online": True, "since_ms": T0, "v": 2},
        "online",
    ],
)
def test_malformed_device_state_raises_protocol_error(content: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_device_state(content)


def test_to_content_checks_structs_built_by_hand() -> None:
    with pytest.raises(ConfigError, match="since_ms"):
        to_content(DeviceState(online=True, since_ms=-1))
    with pytest.raises(ConfigError, match="true or false"):
        to_content(SensorMeta(kind="bool", last=1, last_t_ms=T0))
    with pytest.raises(ConfigError, match="cannot make a content"):
        to_content(Reading("s", T0, 1))  # type: ignore[arg-type]
    content = valid_content()
    assert to_content(parse_batch(content)) == content


# ---------------------------------------------------------------------------
# The worked example of docs/PROTOCOL.md section 3, as a frozen wire vector
# ---------------------------------------------------------------------------

WORKED_EXAMPLE = {
    "device": "boiler-1",
    "seq": 42,
    "t0_ms": 1700000000000,
    "compression": "none",
    "series": [
        {"sensor": "temp", "kind": "float", "n": 3, "precision": 2, "unit": "Cel"},
        {"sensor": "burner", "kind": "bool", "n": 1},
        {"sensor": "mode", "kind": "str", "n": 1},
    ],
    "data": "ANAPAMwhBAXoBwHQDwRhdXRv",
}
WORKED_READINGS = [
    Reading("temp", 1700000000000, 21.5, "Cel", "boiler-1", 42),
    Reading("temp", 1700000001000, 21.52, "Cel", "boiler-1", 42),
    Reading("temp", 1700000002000, 21.49, "Cel", "boiler-1", 42),
    Reading("burner", 1700000000500, True, None, "boiler-1", 42),
    Reading("mode", 1700000001000, "auto", None, "boiler-1", 42),
]


def test_worked_example_of_the_spec() -> None:
    enc = BatchEncoder(precision=2)
    for r in [WORKED_READINGS[0], WORKED_READINGS[3], WORKED_READINGS[1]]:
        enc.add(r.sensor, r.t_ms, r.value, unit=r.unit)
    enc.add("mode", 1700000001000, "auto")
    enc.add("temp", 1700000002000, 21.49, unit="Cel")
    content = enc.encode("boiler-1", 42)
    assert content == WORKED_EXAMPLE
    assert json.dumps(content, separators=(",", ":")) == msgspec.json.encode(content).decode()
    assert decode_batch(WORKED_EXAMPLE) == WORKED_READINGS


COMPRESSED_EXAMPLE: dict[str, Any] = {
    "device": "boiler-1",
    "seq": 43,
    "t0_ms": 1700000000000,
    "series": [{"sensor": "temp", "kind": "float", "n": 60, "precision": 1, "unit": "Cel"}],
    "data": "eNpjuMDPQDaYwMwEBOzkEQChHAIg",
}


def test_compressed_example_of_the_spec() -> None:
    want = [
        Reading("temp", 1700000000000 + 1000 * i, 20.0 + (i % 5) / 10, "Cel", "boiler-1", 43)
        for i in range(60)
    ]
    assert decode_batch(COMPRESSED_EXAMPLE) == want
    enc = BatchEncoder(precision=1)
    enc.extend(want)
    content = enc.encode("boiler-1", 43)
    # zlib output may differ between zlib builds; the packed bytes may not.
    assert {**content, "data": None} == {**COMPRESSED_EXAMPLE, "data": None}
    packed = zlib.decompress(base64.b64decode(content["data"]))
    assert packed == zlib.decompress(base64.b64decode(COMPRESSED_EXAMPLE["data"]))
    assert len(packed) == 122


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    content = json.loads(json.dumps(COMPRESSED_EXAMPLE))
    content["future"] = {"x": [1, "y"]}
    content["series"][0]["aliases"] = ["t"]
    assert len(decode_batch(content)) == 60
    assert decode_sensor_meta({"kind": "int", "color": "red"}).kind == "int"
    assert decode_device_state({"online": True, "since_ms": T0, "x": 1}).online
