"""The examples' pure parts: the whiteboard's data model and the simulated devices."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pycrdt import Doc

from examples.iot_sensor.simulate import Climate, Door, parse_devices
from examples.whiteboard.model import (
    BOARD_H,
    BOARD_W,
    Board,
    InvalidStroke,
    present_users,
    validate_stroke,
)


def stroke(sid: str, *points: int, color: str = "#112233", width: int = 3) -> dict[str, Any]:
    return {"id": sid, "color": color, "width": width, "points": list(points)}


def sync(*docs: Doc) -> None:
    """Exchange every update between the docs (what the room does)."""
    for a in docs:
        for b in docs:
            if a is not b:
                b.apply_update(a.get_update(b.get_state()))


# --------------------------------------------------------------------------- whiteboard model


def test_board_draw_undo_erase_clear_converge_between_two_users():
    da, db = Doc(), Doc()
    alice, bob = Board(da, "@alice:x"), Board(db, "@bob:x")
    alice.draw(stroke("a1", 1, 2, 3, 4))
    bob.draw(stroke("b1", 5, 6))
    alice.draw(stroke("a2", 7, 8))
    sync(da, db)
    assert alice.snapshot()["strokes"] == bob.snapshot()["strokes"]
    assert {s["id"] for s in bob.snapshot()["strokes"]} == {"a1", "b1", "a2"}
    # Points come back as ints, though pycrdt stores numbers as floats.
    a1 = next(s for s in bob.snapshot()["strokes"] if s["id"] == "a1")
    assert a1 == {"id": "a1", "author": "@alice:x", "color": "#112233", "width": 3,
                  "points": [1, 2, 3, 4]}
    assert all(type(v) is int for v in a1["points"])

    # Undo takes back the caller's own latest stroke, never someone else's.
    assert bob.undo() == "b1"
    assert bob.undo() is None
    sync(da, db)
    assert [s["id"] for s in alice.snapshot()["strokes"]] == ["a1", "a2"]
    assert alice.undo() == "a2"

    # Anyone may erase any stroke; erasing twice is harmless.
    sync(da, db)
    assert bob.erase("a1") is True
    assert bob.erase("a1") is False
    sync(da, db)
    assert alice.snapshot()["strokes"] == []


def test_board_clear_keeps_a_stroke_drawn_concurrently():
    da, db = Doc(), Doc()
    alice, bob = Board(da, "@alice:x"), Board(db, "@bob:x")
    alice.draw(stroke("a1", 1, 1))
    sync(da, db)
    alice.clear()
    bob.draw(stroke("b1", 2, 2))  # bob had not seen the clear
    sync(da, db)
    assert [s["id"] for s in alice.snapshot()["strokes"]] == ["b1"]
    assert alice.snapshot() == bob.snapshot()


def test_board_redrawing_the_same_stroke_id_is_a_no_op():
    doc = Doc()
    board = Board(doc, "@alice:x")
    board.draw(stroke("s1", 1, 1))
    board.draw(stroke("s1", 9, 9, color="#ffffff"))  # a page resending after a reconnect
    assert board.snapshot()["strokes"][0]["points"] == [1, 1]
    assert len(board.order) == 1


@pytest.mark.parametrize("bad", [
    None,
    [],
    stroke("", 1, 1),
    stroke("has space", 1, 1),
    stroke("s", 1, 1, color="red"),
    stroke("s", 1, 1, color="#12345"),
    stroke("s", 1, 1, width=0),
    stroke("s", 1, 1, width=65),
    {**stroke("s", 1, 1), "width": 2.5},
    {**stroke("s", 1, 1), "width": True},
    stroke("s"),
    stroke("s", 1, 2, 3),
    stroke("s", 1.5, 2),
    stroke("s", -1, 2),
    stroke("s", BOARD_W + 1, 2),
    stroke("s", 2, BOARD_H + 1),
    {**stroke("s", 1, 1), "points": "1,1"},
    stroke("s", *([1] * 8002)),
])
def test_board_refuses_malformed_strokes(bad):
    board = Board(Doc(), "@alice:x")
    with pytest.raises(InvalidStroke):
        board.draw(bad)
    assert board.snapshot()["strokes"] == []


def test_validate_stroke_normalises_the_colour():
    assert validate_stroke(stroke("s", 0, 0, color="#ABCDEF"))[1] == "#abcdef"


def test_presence_comes_from_awareness_states_never_from_the_document():
    doc = Doc()
    board = Board(doc, "@alice:x")
    states = {
        1: {"user": {"id": "@alice:x", "color": "#e11d48"}, "cursor": [10, 20]},
        2: {"user": {"id": "@alice:x"}},  # her second page
        3: {"user": {"id": "@bob:x"}, "cursor": None},
        4: {},  # a gateway's own empty state
        5: {"user": "garbage"},
        6: "garbage",
    }
    assert present_users(states) == ["@alice:x", "@bob:x"]
    assert board.snapshot(present_users(states))["presence"] == ["@alice:x", "@bob:x"]
    assert set(doc.keys()) <= {"strokes", "order"}


def test_snapshot_survives_foreign_garbage_in_the_document():
    """Another client of the room may write anything into the shared doc."""
    doc = Doc()
    board = Board(doc, "@alice:x")
    board.draw(stroke("ok", 1, 1))
    board.strokes["junk"] = "not a stroke"
    board.strokes["nopoints"] = {"author": "@x:x"}
    board.strokes["orphan"] = {"author": "@x:x", "color": "#000000", "width": 2,
                               "points": [5, 5], "t": 1}
    board.order.append("missing")
    board.order.append(42)
    snap = board.snapshot()
    assert [s["id"] for s in snap["strokes"]] == ["ok", "orphan"]
    assert snap["presence"] == []


# --------------------------------------------------------------------------- simulated devices


def test_climate_follows_a_daily_curve_with_realistic_values():
    day = datetime(2026, 6, 1)
    at = lambda hour: int(day.replace(hour=hour).timestamp() * 1000)  # noqa: E731
    office = Climate("office", mean_c=21.0, swing_c=2.5, humidity=45.0)

    def mean_at(hour: int) -> tuple[float, float]:
        temps, hums = [], []
        for i in range(600):  # ten minutes, one reading a second
            (t_sensor, temp, t_unit), (h_sensor, hum, h_unit) = office.sample(at(hour) + i * 1000)
            assert (t_sensor, t_unit, h_sensor, h_unit) == (
                "office/temperature", "Cel", "office/humidity", "%RH")
            assert round(temp, 2) == temp and round(hum, 1) == hum
            temps.append(temp)
            hums.append(hum)
        return sum(temps) / len(temps), sum(hums) / len(hums)

    night_t, night_h = mean_at(3)
    day_t, day_h = mean_at(15)
    assert 17.5 < night_t < 20.0 < 22.0 < day_t < 24.5
    assert day_h < night_h  # warmer air, lower relative humidity
    assert 20 < day_h < 70 and 20 < night_h < 70


def test_door_opens_now_and_then_and_closes_again():
    door = Door("front-door")
    states = [door.sample(i * 1000)[0][1] for i in range(3600)]
    assert all(isinstance(s, bool) for s in states)
    opened = sum(1 for a, b in zip(states, states[1:], strict=False) if not a and b)
    assert 5 <= opened <= 80
    assert sum(states) < len(states) * 0.3


def test_parse_devices():
    devices = parse_devices("office:climate, cellar ,back-door", seed=1)
    assert [(type(d).__name__, d.name) for d in devices] == [
        ("Climate", "office"), ("Climate", "cellar"), ("Door", "back-door")]
    with pytest.raises(ValueError):
        parse_devices("x:toaster")
    with pytest.raises(ValueError):
        parse_devices(" , ")


