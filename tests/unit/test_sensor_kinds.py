"""Sensor kinds (streams/sensors.py): declared or inferred once, mismatches refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxsync.errors import ConfigError
from mxsync.protocol.readings import Reading
from mxsync.streams.history import aggregate
from mxsync.streams.sensors import Sensors

T = 1_700_000_000_000


def publish(sensors: Sensors, sensor: str, value: object) -> None:
    sensors.row(sensor, sensors.get(sensor), value, T, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "good", "bad"), [
    ("number", [1, 2.5, -3], ["1", True, False]),
    ("boolean", [True, False], [1, 0, "true", 1.0]),
    ("text", ["on", ""], [1, True, 2.5]),
    ("counter", [0, 5, 5, 9], [-1, 2.5, True, "7"]),
])
def test_a_declared_kind_takes_its_values_and_names_sensor_kind_and_value_otherwise(
    kind: str, good: list[object], bad: list[object]
) -> None:
    s = Sensors("dev", None)
    s.declare("x", kind=kind)
    for v in good:
        publish(s, "x", v)
    for v in bad:
        with pytest.raises(ConfigError) as err:
            publish(s, "x", v)
        msg = str(err.value)
        assert "'x'" in msg and kind in msg and repr(v) in msg


def test_an_enum_takes_only_its_values() -> None:
    s = Sensors("dev", None)
    s.declare("mode", kind="enum", values=["auto", "off"])
    publish(s, "mode", "auto")
    with pytest.raises(ConfigError, match=r"'mode' is an enum sensor \(one of \['auto', 'off'\]\)"):
        publish(s, "mode", "turbo")
    for bad in ([], "auto", [1], None):
        with pytest.raises(ConfigError, match="enum"):
            Sensors("dev", None).declare("m", kind="enum", values=bad)


def test_a_counter_never_goes_down_in_one_run() -> None:
    s = Sensors("dev", None)
    s.declare("n", kind="counter")
    publish(s, "n", 10)
    with pytest.raises(ConfigError, match="below its last value 10"):
        publish(s, "n", 9)
    publish(s, "n", 10)


def test_bad_declarations_are_refused() -> None:
    s = Sensors("dev", None)
    with pytest.raises(ConfigError, match="kind must be one of"):
        s.declare("x", kind="float")
    with pytest.raises(ConfigError, match="precision is for number"):
        s.declare("x", kind="boolean", precision=2)
    with pytest.raises(ConfigError, match="values are for enum"):
        s.declare("x", kind="text", values=["a"])


@given(st.sampled_from([1, 2.5, True, "on"]), st.sampled_from([1, 2.5, True, "on"]))
def test_an_undeclared_sensor_keeps_the_kind_of_its_first_value(first: object,
                                                                then: object) -> None:
    s = Sensors("dev", None)
    publish(s, "u", first)
    def kind(v: object) -> str:
        return "boolean" if type(v) is bool else "text" if type(v) is str else "number"
    if kind(first) == kind(then):
        publish(s, "u", then)
    else:
        with pytest.raises(ConfigError, match=f"'u' is a {kind(first)} sensor"):
            publish(s, "u", then)


def test_window_never_averages_booleans_or_text() -> None:
    rs = [Reading("s", 0, True), Reading("s", 1, False), Reading("s", 2, "x"), Reading("s", 3, 4)]
    (b,) = aggregate(rs, 0, 10, 1)
    assert (b.count, b.numbers, b.min, b.max, b.mean) == (4, 1, 4, 4, 4.0)
    (only_bools,) = aggregate(rs[:2], 0, 10, 1)
    assert (only_bools.count, only_bools.numbers, only_bools.mean) == (2, 0, None)


def test_the_sensor_state_carries_the_kind_and_refuses_contradictions() -> None:
    from mxsync.errors import ProtocolError
    from mxsync.protocol.readings import SensorMeta, decode_sensor_meta, to_content

    m = SensorMeta.from_reading(Reading("mode", T, "auto"), sensor_kind="enum",
                                values=["auto", "off"])
    assert decode_sensor_meta(to_content(m)) == m
    assert decode_sensor_meta({"kind": "int", "sensor_kind": "gauge-v9"}).sensor_kind == "gauge-v9"
    for bad in ({"kind": "bool", "sensor_kind": "number"}, {"kind": "str", "values": ["a"]},
                {"kind": "str", "sensor_kind": "enum", "values": []},
                {"kind": "float", "sensor_kind": "counter"}):
        with pytest.raises(ProtocolError):
            decode_sensor_meta(bad)
