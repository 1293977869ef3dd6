"""The export formats of ``mxsync sensor export``: exact values, ns times, escaping."""

from __future__ import annotations

import csv
import io
import math

from hypothesis import given
from hypothesis import strategies as st

from mxsync.cli.export import csv_header, csv_line, influx_line
from mxsync.protocol.readings import Reading

finite = st.floats(allow_nan=False, allow_infinity=False)


@given(finite, st.integers(0, 7_258_118_400_000))
def test_floats_and_times_come_back_exactly_from_csv(v: float, t: int) -> None:
    r = Reading("a,b", t, v, "Cel", "dev 1", 3, 7, 2)
    row = next(csv.reader(io.StringIO(csv_line(r))))
    got = dict(zip(csv_header(), row, strict=True))
    assert float(got["value"]) == v and math.copysign(1, float(got["value"])) == math.copysign(1, v)
    assert int(got["t_ns"]) == t * 1_000_000
    assert (got["sensor"], got["kind"], got["device"]) == ("a,b", "float", "dev 1")
    assert (got["session"], got["seq"], got["index"]) == ("7", "3", "2")


def test_influx_lines_type_and_escape_every_kind() -> None:
    base = {"t_ms": 1_700_000_000_000, "device": "d 1", "seq": 4, "session": 9, "index": 0}
    assert influx_line(Reading(sensor="room,1 t", value=21.5, unit="°C", **base)) == (
        "mxsync,sensor=room\\,1\\ t,device=d\\ 1,unit=°C value=21.5,session=9i,seq=4i,index=0i "
        "1700000000000000000\n")
    assert " value=42i," in influx_line(Reading(sensor="n", value=42, **base))
    assert " value=true," in influx_line(Reading(sensor="b", value=True, **base))
    assert ' value="say \\"hi\\" \\\\",' in influx_line(
        Reading(sensor="s", value='say "hi" \\', **base))
