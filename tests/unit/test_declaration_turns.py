"""Who declares a new document first (docs/loader.declaration_delay), without a server."""

from __future__ import annotations

from mxsync.docs.loader import declaration_delay
from mxsync.engine.events import RoomEvent

ROOM = "!r:x"


def _state(members: list[str], writers: list[str]) -> list[RoomEvent]:
    pl = {"users": {u: 50 for u in writers}, "users_default": 0, "events_default": 50,
          "state_default": 50}
    events = [RoomEvent(room_id=ROOM, event_id="$pl", sender=writers[0], type="m.room.power_levels",
                        content=pl, state_key="")]
    events += [RoomEvent(room_id=ROOM, event_id=f"$m{i}", sender=u, type="m.room.member",
                         content={"membership": "join"}, state_key=u)
               for i, u in enumerate(members)]
    return events


def test_members_who_may_declare_take_distinct_turns():
    users = [f"@u{i}:x" for i in range(3)]
    state = _state(users, users)
    delays = sorted(declaration_delay(state, u, "notes") for u in users)
    assert delays == [0.0, 0.5, 1.0]
    # Another document name orders them differently, but still one at a time.
    assert sorted(declaration_delay(state, u, "other") for u in users) == [0.0, 0.5, 1.0]


def test_members_who_may_not_declare_do_not_take_a_turn():
    writer, reader = "@w:x", "@r:x"
    state = _state([writer, reader], [writer])
    assert declaration_delay(state, writer, "notes") == 0.0


def test_turns_are_capped():
    users = [f"@u{i}:x" for i in range(12)]
    state = _state(users, users)
    assert max(declaration_delay(state, u, "n") for u in users) == 2.0
