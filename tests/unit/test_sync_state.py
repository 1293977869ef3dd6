"""When the sync loop's state cache stands for the room's state (``holds_state``):
only once a sync handed a room's full state, for the types its filter carries.

/sync answers are scripted, shaped as Synapse 1.163 gives them: a first sync
(no since-token) and the sync that lists a room joined since carry its full
state; any other sync carries changes only. No server.
"""

from __future__ import annotations

from typing import Any

import pytest

from mxsync.engine.store import Store
from mxsync.engine.sync import SyncLoop
from mxsync.protocol.api import Request
from mxsync.protocol.types import CREATE, DOC, MEMBER, POWER_LEVELS

pytestmark = pytest.mark.anyio


def _room(*state_types: str) -> dict[str, Any]:
    events = [{"event_id": f"${t}", "sender": "@a:hs", "type": t, "state_key": "",
               "content": {}, "origin_server_ts": 1} for t in state_types]
    return {"state": {"events": events}, "timeline": {"events": [], "limited": False}}


class ScriptedSync:
    """Answers each /sync with the next scripted answer."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.since: list[str | None] = []

    async def call(self, req: Request, **_: Any) -> dict[str, Any]:
        assert req.path.endswith("/sync") and req.query is not None
        self.since.append(req.query.get("since"))
        return self.answers.pop(0)


@pytest.fixture
async def store():
    s = Store(None)
    await s.open()
    yield s
    await s.close()


async def _loop(store: Store, answers: list[dict[str, Any]]) -> SyncLoop:
    loop = SyncLoop(ScriptedSync(answers), store)  # type: ignore[arg-type]
    await loop._load()
    return loop


async def test_a_first_sync_and_a_room_joined_after_it_hold_their_state(store):
    loop = await _loop(store, [
        {"next_batch": "s1", "rooms": {"join": {"!a:hs": _room(CREATE, POWER_LEVELS)}}},
        {"next_batch": "s2", "rooms": {"join": {"!a:hs": _room(),
                                                "!b:hs": _room(CREATE, DOC)}}},
        {"next_batch": "s3", "rooms": {"leave": {"!a:hs": {}}}},
    ])
    await loop.sync_once()
    assert loop.holds_state("!a:hs", POWER_LEVELS) and loop.holds_state("!a:hs", DOC)
    # Members are lazy-loaded: never taken as complete.
    assert not loop.holds_state("!a:hs", MEMBER)
    assert not loop.holds_state("!b:hs", CREATE)
    await loop.sync_once()
    assert loop.holds_state("!b:hs", DOC) and loop.holds_state("!a:hs", CREATE)
    await loop.sync_once()  # left: the cache no longer follows it
    assert not loop.holds_state("!a:hs", CREATE) and loop.holds_state("!b:hs", CREATE)


async def test_a_run_from_a_saved_since_token_holds_no_room_state(store):
    await store.kv_set("sync", "since", b"s9")
    loop = await _loop(store, [
        {"next_batch": "s10", "rooms": {"join": {"!a:hs": _room(DOC)}}},
        {"next_batch": "s11", "rooms": {"join": {"!b:hs": _room(CREATE)}}},
    ])
    await loop.sync_once()
    await loop.sync_once()
    # Changes only: neither room's cache is its state (nor is a room first seen
    # now known to be newly joined: the joined rooms were never listed).
    assert not loop.holds_state("!a:hs", DOC) and not loop.holds_state("!a:hs", CREATE)
    assert not loop.holds_state("!b:hs", CREATE)
