"""The decrypt step of :mod:`mxsync.engine.crypto` with two real nio Olm machines
in memory (no server): holding events whose key is missing, recovering them once
the key arrives, and skipping, counted, what must not be delivered."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from nio import AsyncClient
from nio.crypto import OlmDevice

from mxsync.engine.crypto import Crypto, nio_config
from mxsync.engine.events import RoomEvent
from mxsync.protocol.types import DOC_UPDATE, ENCRYPTED

ROOM = "!room:x"
_ids = itertools.count()


async def _never(_: str) -> bool:
    return False


def machine(user: str, device: str) -> tuple[AsyncClient, Crypto]:
    nio = AsyncClient("http://127.0.0.1:1", user, device_id=device, config=nio_config())
    nio.user_id = user  # as the Connection does after its login
    crypto = Crypto(nio, None, _never)
    crypto.open()
    return nio, crypto


class Sender:
    """Alice's side: an outbound megolm session and the events it encrypts."""

    def __init__(self) -> None:
        self.nio, _ = machine("@alice:x", "ALICE")
        olm = self.nio.olm
        assert olm is not None
        olm.create_outbound_group_session(ROOM)
        self.session = olm.outbound_group_sessions[ROOM]
        self.session_key = self.session.session_key  # exported at index 0
        self.session.shared = True

    def event(self, content: dict[str, Any], *, etype: str = DOC_UPDATE,
              room: str = ROOM) -> RoomEvent:
        assert self.nio.olm is not None
        payload = self.nio.olm.group_encrypt(ROOM, {"type": etype, "content": content})
        if room != ROOM:  # a plaintext that names another room, in this room's session
            plain = json.dumps({"type": etype, "content": content, "room_id": room})
            payload["ciphertext"] = self.session.encrypt(plain)
        return RoomEvent(room_id=ROOM, event_id=f"$e{next(_ids)}", sender="@alice:x",
                         type=ENCRYPTED, content=payload, origin_server_ts=1)

    def give_key(self, nio: AsyncClient) -> None:
        assert self.nio.olm is not None and nio.olm is not None
        keys = self.nio.olm.account.identity_keys
        nio.olm.create_group_session(keys["curve25519"], keys["ed25519"], ROOM,
                                     self.session.id, self.session_key)


@pytest.fixture
def alice() -> Sender:
    return Sender()


def test_an_event_without_its_key_is_held_then_delivered_once_the_key_arrives(alice):
    nio, bob = machine("@bob:x", "BOB")
    first = alice.event({"n": 1})
    assert bob.decrypt(ROOM, [first]) == []
    assert bob.statistics().held == 1
    alice.give_key(nio)
    second = alice.event({"n": 2})
    got = bob.decrypt(ROOM, [second])
    assert [(e.type, e.content, e.sender) for e in got] == [
        (DOC_UPDATE, {"n": 1}, "@alice:x"), (DOC_UPDATE, {"n": 2}, "@alice:x")]
    assert [e.event_id for e in got] == [first.event_id, second.event_id]
    st = bob.statistics()
    assert (st.held, st.recovered, st.decrypted, st.undecryptable) == (0, 1, 2, 0)


def test_history_pages_do_not_hold_and_count_what_they_cannot_read(alice):
    _, bob = machine("@bob:x", "BOB")
    assert bob.decrypt(ROOM, [alice.event({"n": 1})], hold=False) == []
    st = bob.statistics()
    assert (st.held, st.undecryptable) == (0, 1)


def test_cleartext_events_pass_untouched(alice):
    _, bob = machine("@bob:x", "BOB")
    ev = RoomEvent(room_id=ROOM, event_id="$c", sender="@a:x", type="org.mxsync.doc",
                   content={}, state_key="d")
    events = [ev]
    assert bob.decrypt(ROOM, events) is events


@pytest.mark.parametrize("case", ["other room", "foreign type", "bad ciphertext", "bad device"])
def test_what_must_not_be_delivered_is_skipped_and_counted(alice, case):
    nio, bob = machine("@bob:x", "BOB")
    alice.give_key(nio)
    if case == "other room":
        ev = alice.event({"n": 1}, room="!elsewhere:x")
    elif case == "foreign type":
        ev = alice.event({"body": "hi"}, etype="m.room.message")
    elif case == "bad ciphertext":
        ev = alice.event({"n": 1})
        ct = ev.content["ciphertext"]
        content = {**ev.content, "ciphertext": ct[:40] + ("A" if ct[40] != "A" else "B") + ct[41:]}
        ev = RoomEvent(room_id=ROOM, event_id="$bad", sender=ev.sender, type=ENCRYPTED,
                       content=content)
    else:
        ev = alice.event({"n": 1})
        assert nio.olm is not None
        nio.olm.device_store.add(OlmDevice("@alice:x", "ALICE", {
            "ed25519": "x" * 43, "curve25519": "y" * 43}))
    assert bob.decrypt(ROOM, [ev]) == []
    assert bob.statistics().undecryptable == 1


def test_held_events_survive_a_restart_and_are_recovered_when_the_key_arrives(alice):
    """What the sync loop writes with its position (held_rows) a new machine
    loads (load_held): a restart before the key arrives loses no event, and
    the room is listed as recoverable once the key is there."""
    nio, bob = machine("@bob:x", "BOB")
    events = [alice.event({"n": i}) for i in range(3)]
    assert bob.decrypt(ROOM, events) == []
    rows = bob.held_rows()
    assert rows is not None and len(rows) == 3
    bob.held_written()
    assert bob.held_rows() is None  # nothing changed since

    nio2, bob2 = machine("@bob:x", "BOB")  # the restarted client, same store rows
    bob2.load_held(dict(rows) | {"!room:x $bad": b"{not json"})
    assert bob2.statistics().held == 3
    assert bob2.recoverable_rooms() == []
    alice.give_key(nio2)
    assert bob2.recoverable_rooms() == [ROOM]
    got = bob2.decrypt(ROOM, [])
    assert [e.content["n"] for e in got] == [0, 1, 2]
    assert bob2.statistics().held == 0 and bob2.statistics().recovered == 3
    assert bob2.held_rows() == []  # the store's copy is emptied with the next position
