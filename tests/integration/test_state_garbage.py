"""No state event can lock a reader out (PROTOCOL §1.7), against a real Synapse.

A writer replaces every mxsync state event of a room (the document declaration
``org.mxsync.doc``, a sensor's ``org.mxsync.sensor``, a device's
``org.mxsync.device``) with contents hypothesis generates and mxsync's decoders
refuse, stacked several versions deep. A client that opens the room afterwards
(fresh store) still opens the document and subscribes, and gets the same
values as a client that followed the room live and as the room had before the
garbage.

Round trips are kept few: the garbage is drawn up front (no server per
example), a handful of rounds each write three to nine state events, then one
fresh client opens the room.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import anyio
import pycrdt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mxsync import Client
from mxsync.errors import ConfigError, ProtocolError
from mxsync.protocol import docs as proto_docs
from mxsync.protocol.api import q
from mxsync.protocol.readings import (
    BatchEncoder,
    decode_device_state,
    decode_sensor_meta,
)
from mxsync.protocol.types import DEVICE, DOC, MAX_SAFE_INT, SENSOR

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

DOC_NAME = "notes"
SENSOR_ID = "temp"
DEVICE_ID = "dev-1"
END = "org.mxsync.test.end"

VALID_SENSOR = {"kind": "float", "device": DEVICE_ID, "unit": "Cel", "precision": 2,
                "last": 2137, "last_exp": 2, "last_t_ms": 1_700_000_000_000}
VALID_DEVICE = {"online": True, "since_ms": 1_700_000_000_000, "session": 1,
                "description": "boiler room"}

ints = st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
leaf = st.none() | st.booleans() | ints | st.text(max_size=16)
json_value = st.recursive(
    leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                                     max_size=3),
    max_leaves=8)
fields = st.sampled_from(["v", "encoding", "kind", "device", "unit", "precision", "last",
                          "last_exp", "last_t_ms", "online", "since_ms", "session",
                          "heartbeat_ms", "last_seq", "reason", "description", "name"])
random_content = st.dictionaries(fields | st.text(max_size=6), json_value, min_size=1,
                                 max_size=6)


def mutated(valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``valid`` with one field replaced by any JSON value, or removed."""
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        content = dict(valid)
        key = draw(st.sampled_from(sorted(content) + ["v"]))
        if draw(st.booleans()) and key in content and len(content) > 1:
            del content[key]
        else:
            content[key] = draw(json_value)
        return content
    return build()


def refused(etype: str, content: dict[str, Any]) -> bool:
    """Does mxsync's decoder refuse ``content`` (what a reader must skip)?"""
    try:
        if etype == DOC:
            decl = proto_docs.decode_doc_event(DOC, content)
            return not (isinstance(decl, proto_docs.DocDeclaration) and decl.supported)
        (decode_sensor_meta if etype == SENSOR else decode_device_state)(content)
    except (ProtocolError, ConfigError):
        return True
    return False


def garbage(etype: str, valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return (random_content | mutated(valid)).filter(lambda c: refused(etype, c))


#: One round: for each state type, 1 to 3 garbage versions written in order.
round_strategy = st.fixed_dictionaries({
    DOC: st.lists(garbage(DOC, {"v": 1, "encoding": "yjs-v1"}), min_size=1, max_size=3),
    SENSOR: st.lists(garbage(SENSOR, VALID_SENSOR), min_size=1, max_size=3),
    DEVICE: st.lists(garbage(DEVICE, VALID_DEVICE), min_size=1, max_size=3),
})

ROUNDS = 4


def draw_rounds(n: int) -> list[dict[str, list[dict[str, Any]]]]:
    """``n`` rounds drawn deterministically by hypothesis, no server per example."""
    out: list[dict[str, list[dict[str, Any]]]] = []

    @settings(max_examples=n, derandomize=True, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(round_strategy)
    def collect(example: dict[str, list[dict[str, Any]]]) -> None:
        out.append(example)

    collect()
    return out[:n]


async def raw_put(http: aiohttp.ClientSession, url: str, token: str, room: str, etype: str,
                  state_key: str | None, content: Any) -> str:
    """PUT an event with the writer's own token, bypassing mxsync; its event id."""
    path = (f"send/{q(etype)}/raw{uuid.uuid4().hex}" if state_key is None
            else f"state/{q(etype)}/{q(state_key)}")
    async with http.put(f"{url}/_matrix/client/v3/rooms/{q(room)}/{path}", json=content,
                        headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
        return str(body["event_id"])


def text_of(doc: pycrdt.Doc) -> str:
    return str(doc.get("t", type=pycrdt.Text))


async def view(client: Client, room: str) -> tuple[str, Any, Any, Any]:
    """What a client opening ``room`` now sees: the document's text, the sensors'
    metadata, the devices and the sensor's latest reading."""
    async with client.open_doc(room, DOC_NAME, read_only=True) as d, \
            client.subscribe(room) as sub:
        with anyio.fail_after(60):
            await d.wait_synced()
        latest = await sub.latest(SENSOR_ID)
        return text_of(d.doc), sub.sensors, _devices(sub.devices), latest


def _devices(devs: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.sender, v.online, v.since_ms, v.event_ts, v.session, v.description)
            for k, v in devs.items()}


async def test_garbage_over_every_state_type_locks_no_reader_out(hs, make_user, make_client,
                                                                  tmp_path):
    rounds = draw_rounds(ROUNDS)
    assert len(rounds) == ROUNDS
    alice_c = await make_user("alice", relaxed=True)
    bob_c = await make_user("bob", relaxed=True)
    carol_c = await make_user("carol", relaxed=True)
    alice = await make_client(alice_c)
    room = await alice.create_room("garbage-state", invite=[bob_c.user_id, carol_c.user_id])
    bob = await make_client(bob_c)
    await bob.join(room)
    carol = await make_client(carol_c)
    await carol.join(room)

    enc = BatchEncoder()
    for i in range(5):
        enc.add(SENSOR_ID, 1_700_000_000_000 + i * 1000, 20 + i)
    batch = enc.encode(DEVICE_ID, 0, session=1)

    async with aiohttp.ClientSession() as http, alice.open_doc(room, DOC_NAME) as da:
        with anyio.fail_after(60):
            await da.wait_synced()
            for c in (bob, carol):  # declared, before a reader looks
                while await c.get_state(room, DOC, DOC_NAME) is None:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
        await scenario(hs, http, alice_c.access_token, room, da, bob, carol_c, carol,
                       make_client, tmp_path, rounds, batch)


async def scenario(hs: Any, http: aiohttp.ClientSession, token: str, room: str, da: Any,
                   bob: Client, carol_c: Any, carol: Client, make_client: Any, tmp_path: Any,
                   rounds: list[dict[str, list[dict[str, Any]]]], batch: dict[str, Any]) -> None:
    async with (
        bob.open_doc(room, DOC_NAME, read_only=True) as db,
        bob.subscribe(room) as live,
        bob.room_events(room, [END]) as marks,
    ):
        with anyio.fail_after(60):
            await db.wait_synced()
        da.doc.get("t", type=pycrdt.Text).insert(0, "hello")
        with anyio.fail_after(60):
            await da.flush()
        await raw_put(http, hs.url, token, room, SENSOR, SENSOR_ID, VALID_SENSOR)
        await raw_put(http, hs.url, token, room, DEVICE, DEVICE_ID, VALID_DEVICE)
        await raw_put(http, hs.url, token, room, "org.mxsync.readings", None, batch)

        clean = await view(carol, room)
        assert clean[0] == "hello"
        assert set(clean[1]) == {SENSOR_ID} and clean[1][SENSOR_ID].unit == "Cel"
        assert clean[2][DEVICE_ID][1:] == (True, 1_700_000_000_000,
                                           clean[2][DEVICE_ID][3], 1, "boiler room")
        assert clean[3] is not None and clean[3].value == 24

        for k, r in enumerate(rounds):
            for etype, key in ((DOC, DOC_NAME), (SENSOR, SENSOR_ID), (DEVICE, DEVICE_ID)):
                for content in r[etype]:
                    await raw_put(http, hs.url, token, room, etype, key, content)
            await raw_put(http, hs.url, token, room, END, None, {"round": k})
            with anyio.fail_after(30):
                await marks.receive()  # Bob's sync loop has dispatched the garbage

            # A fresh client (its own new store) opens the room cold.
            fresh = await make_client(carol_c, store=tmp_path / f"fresh{k}.db")
            got = await view(fresh, room)
            assert got == clean, (k, r)
            # The live follower skipped the garbage and agrees.
            assert text_of(db.doc) == clean[0]
            assert live.sensors == clean[1]
            assert _devices(live.devices) == clean[2]
