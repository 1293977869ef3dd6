"""State decoders take any JSON without crashing, and the walk back through a
state's history (engine/state_history.py) finds the newest valid version, bounded.

The walk is tested with a fake of the one engine call it makes (``context``);
its behaviour against Synapse is in tests/integration/test_state_garbage.py.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxsync.engine.events import RoomEvent, parse_event
from mxsync.engine.state_history import newest_valid, state_versions
from mxsync.errors import ConfigError, MatrixError, ProtocolError
from mxsync.protocol import docs as proto_docs
from mxsync.protocol.types import DEVICE, DOC, MAX_SAFE_INT, SENSOR
from mxsync.streams.state import decode_state

json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=16)
keys = st.sampled_from(["v", "encoding", "kind", "device", "unit", "precision", "last",
                        "last_exp", "last_t_ms", "online", "since_ms", "session",
                        "heartbeat_ms", "last_seq", "reason", "description", "name"])
contents = st.dictionaries(keys | st.text(max_size=8), json_value, max_size=8)


@settings(max_examples=150, deadline=None)
@given(contents)
def test_the_declaration_decoder_raises_only_protocol_error(content: dict[str, Any]) -> None:
    try:
        decl = proto_docs.decode_doc_event(DOC, content)
    except ProtocolError:
        return
    assert isinstance(decl, proto_docs.DocDeclaration)
    assert isinstance(decl.encoding, str)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([SENSOR, DEVICE]), st.text(max_size=12) | st.just("temp"), contents)
def test_the_stream_state_decoder_raises_only_protocol_or_config_error(
    etype: str, key: str, content: dict[str, Any]
) -> None:
    ev = RoomEvent(room_id="!r", event_id="$e", sender="@a:x", type=etype, content=content,
                   state_key=key)
    try:
        value = decode_state(ev)
    except (ProtocolError, ConfigError):
        return
    assert type(value).__name__ == ("SensorMeta" if etype == SENSOR else "DeviceState")


def test_parse_event_keeps_replaces_state_of_state_events_only() -> None:
    raw = {"event_id": "$2", "sender": "@a:x", "type": SENSOR, "content": {}, "state_key": "t",
           "unsigned": {"replaces_state": "$1"}}
    ev = parse_event("!r", raw)
    assert ev is not None and ev.replaces_state == "$1"
    timeline = parse_event("!r", {**raw, "state_key": None})
    assert timeline is not None and timeline.replaces_state is None
    odd = parse_event("!r", {**raw, "unsigned": {"replaces_state": 7}})
    assert odd is not None and odd.replaces_state is None


class FakeHistory:
    """The engine's ``context`` over a fixed set of events; counts the calls."""

    def __init__(self, events: list[RoomEvent], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.by_id = {ev.event_id: ev for ev in events}
        self.fail = fail
        self.calls = 0

    async def context(self, room_id: str, event_id: str) -> tuple[RoomEvent | None, str | None]:
        self.calls += 1
        if event_id in self.fail:
            raise MatrixError(404, "M_NOT_FOUND", "gone")
        return self.by_id.get(event_id), None


def chain(n: int, *, loop_to: int | None = None, etype: str = SENSOR) -> list[RoomEvent]:
    """Versions $0 (oldest) .. $n-1 (current), each replacing the one before."""
    out = []
    for i in range(n):
        prev = f"${i - 1}" if i > 0 else (f"${loop_to}" if loop_to is not None else None)
        out.append(RoomEvent(room_id="!r", event_id=f"${i}", sender="@a:x", type=etype,
                             content={"i": i}, state_key="t", replaces_state=prev))
    return out


def walk(engine: FakeHistory, current: RoomEvent, **kw: Any) -> list[str]:
    async def main() -> list[str]:
        return [ev.event_id async for ev in state_versions(engine, "!r", current, **kw)]  # type: ignore[arg-type]
    return anyio.run(main)


def test_the_walk_goes_back_one_request_per_version() -> None:
    evs = chain(5)
    engine = FakeHistory(evs)
    assert walk(engine, evs[-1]) == ["$4", "$3", "$2", "$1", "$0"]
    assert engine.calls == 4


def test_the_walk_is_bounded_and_stops_on_a_loop_or_a_fetch_error() -> None:
    evs = chain(40)
    assert len(walk(FakeHistory(evs), evs[-1], limit=16)) == 16
    looped = chain(4, loop_to=3)  # $0 claims to replace $3
    assert walk(FakeHistory(looped), looped[-1]) == ["$3", "$2", "$1", "$0"]
    assert walk(FakeHistory(evs, fail={"$37"}), evs[-1]) == ["$39", "$38"]


def test_the_walk_stops_where_the_history_leads_to_another_state() -> None:
    evs = chain(3)
    other = RoomEvent(room_id="!r", event_id="$1", sender="@a:x", type=DEVICE, content={},
                      state_key="t", replaces_state="$0")
    assert walk(FakeHistory([evs[0], other, evs[2]]), evs[2]) == ["$2"]


@pytest.mark.parametrize(("valid", "expected"), [({2}, "$2"), ({0, 1}, "$1"), (set(), None)])
def test_newest_valid_returns_the_newest_accepted_version(valid: set[int],
                                                          expected: str | None) -> None:
    evs = chain(5)

    async def accept(ev: RoomEvent) -> int | None:
        i = ev.content["i"]
        return i if i in valid else None

    async def main() -> tuple[RoomEvent, int] | None:
        return await newest_valid(FakeHistory(evs), "!r", evs[-1], accept)  # type: ignore[arg-type]

    found = anyio.run(main)
    if expected is None:
        assert found is None
    else:
        assert found is not None and found[0].event_id == expected
        assert found[1] == int(expected[1:])
