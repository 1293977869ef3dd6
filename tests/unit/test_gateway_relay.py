"""DocRelay, the y-websocket protocol between one document and its peers, with no
socket: two relays on two docs, bridged by hand, converge; a read-only peer is
refused; awareness goes to every peer and leaves with its peer; bad frames raise
ProtocolError and change nothing; a peer that does not read is dropped."""

from __future__ import annotations

from typing import Any

import pycrdt
import pytest
from pycrdt._sync import Decoder, YMessageType, YSyncMessageType, create_update_message

from mxsync.errors import ConfigError, ProtocolError
from mxsync.gateway import DocRelay, Gateway, Peer


def drain(peer: Peer) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(peer.outgoing.receive_nowait())
        except Exception:  # WouldBlock or EndOfStream
            return out


class Client:
    """A y-websocket client's side: a doc that applies what the relay sends."""

    def __init__(self) -> None:
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        self.awareness = pycrdt.Awareness(self.doc)

    def feed(self, relay: DocRelay, peer: Peer) -> None:
        """Apply every queued message; answer a step 1 like a provider does."""
        for msg in drain(peer):
            if msg[0] == YMessageType.SYNC:
                reply = pycrdt.handle_sync_message(msg[1:], self.doc)
                if reply is not None:
                    relay.receive(peer, reply)
            elif msg[0] == YMessageType.AWARENESS:
                dec = Decoder(msg[1:])
                self.awareness.apply_awareness_update(dec.read_message() or b"", "relay")


def edit(doc: pycrdt.Doc[Any], text: str) -> bytes:
    before = doc.get_state()
    with doc.transaction():
        t = doc.get("text", type=pycrdt.Text)
        t += text
    return create_update_message(doc.get_update(before))


def text(doc: pycrdt.Doc[Any]) -> str:
    return str(doc.get("text", type=pycrdt.Text))


def test_peers_sync_by_state_vector_and_receive_every_update():
    server: pycrdt.Doc[Any] = pycrdt.Doc()
    with DocRelay(server, pycrdt.Awareness(server)) as relay:
        server.get("text", type=pycrdt.Text).insert(0, "base ")
        a, b = Client(), Client()
        pa, pb = Peer("a", read_only=False), Peer("b", read_only=False)
        relay.join(pa)
        relay.join(pb)
        relay.receive(pa, pycrdt.create_sync_message(a.doc))  # each client's step 1
        relay.receive(pb, pycrdt.create_sync_message(b.doc))
        a.feed(relay, pa)
        b.feed(relay, pb)
        assert text(a.doc) == "base "
        relay.receive(pa, edit(a.doc, "from a"))
        b.feed(relay, pb)
        a.feed(relay, pa)
        assert text(server) == text(a.doc) == text(b.doc) == "base from a"
        assert relay.applied >= 1


def test_a_read_only_peer_receives_but_cannot_write():
    server: pycrdt.Doc[Any] = pycrdt.Doc()
    with DocRelay(server, pycrdt.Awareness(server)) as relay:
        reader = Client()
        peer = Peer("r", read_only=True)
        relay.join(peer)
        reader.feed(relay, peer)
        relay.receive(peer, edit(reader.doc, "nope"))
        assert text(server) == "" and peer.refused == 1
        server.get("text", type=pycrdt.Text).insert(0, "news")
        reader.feed(relay, peer)
        assert "news" in text(reader.doc)


def test_awareness_reaches_every_peer_and_leaves_with_its_peer():
    server: pycrdt.Doc[Any] = pycrdt.Doc()
    awareness = pycrdt.Awareness(server)
    with DocRelay(server, awareness) as relay:
        a, b = Client(), Client()
        pa, pb = Peer("a", read_only=False), Peer("b", read_only=False)
        relay.join(pa)
        relay.join(pb)
        a.awareness.set_local_state({"user": {"id": "@a:x"}})
        relay.receive(pa, pycrdt.create_awareness_message(
            a.awareness.encode_awareness_update([a.awareness.client_id])))
        b.feed(relay, pb)
        assert b.awareness.states[a.awareness.client_id] == {"user": {"id": "@a:x"}}
        assert awareness.states[a.awareness.client_id] == {"user": {"id": "@a:x"}}
        relay.leave(pa)
        b.feed(relay, pb)
        assert a.awareness.client_id not in b.awareness.states
        assert a.awareness.client_id not in awareness.states
        assert set(server.keys()) == set()  # never in the document


@pytest.mark.parametrize("frame", [
    b"",
    b"\xff\xff\xff",
    b"\x00\x02\x05ab",             # an update longer than the frame
    b"\x00\x09\x00",               # unknown sync step
    b"\x07\x00",                   # unknown message type
    b"\x00\x02\x03\x01\x02\x03",   # not a Yjs update
    b"\x00\x00\x02\xff\xff",       # step 1 with a bad state vector
    b"\x01\x05\x01\x01\x01\x01[",  # awareness with bad JSON
    b"\x01\x06\x01\x01\x01\x03[1]"[:8],
])
def test_bad_frames_raise_protocol_error_and_change_nothing(frame):
    server: pycrdt.Doc[Any] = pycrdt.Doc()
    server.get("text", type=pycrdt.Text).insert(0, "kept")
    with DocRelay(server, pycrdt.Awareness(server)) as relay:
        peer = Peer("bad", read_only=False)
        relay.join(peer)
        with pytest.raises(ProtocolError):
            relay.receive(peer, frame)
        assert text(server) == "kept"


def test_a_peer_that_does_not_read_is_dropped_not_waited_for():
    server: pycrdt.Doc[Any] = pycrdt.Doc()
    with DocRelay(server, pycrdt.Awareness(server)) as relay:
        slow = Peer("slow", read_only=False, queue=16)
        relay.join(slow)
        t = server.get("text", type=pycrdt.Text)
        for i in range(40):
            t += str(i)
        assert slow.dropped
        assert len(drain(slow)) == 16


def test_a_sync_step1_gets_only_the_missing_diff():
    server: pycrdt.Doc[Any] = pycrdt.Doc()
    server.get("text", type=pycrdt.Text).insert(0, "x" * 1000)
    with DocRelay(server, pycrdt.Awareness(server)) as relay:
        peer = Peer("p", read_only=False)
        relay.join(peer)
        drain(peer)
        relay.receive(peer, pycrdt.create_sync_message(server))  # it has everything
        (reply,) = drain(peer)
        assert reply[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])
        assert len(reply) < 20


def test_gateway_arguments_are_checked():
    for kw, what in (({}, "no way in"), ({"tokens": {"short": "write"}}, "8 characters"),
                     ({"tokens": {"long-enough": "admin"}}, "'write' or 'read'"),
                     ({"anonymous": "all"}, "anonymous"), ({"anonymous": "read", "port": 70000},
                                                           "not a port")):
        with pytest.raises(ConfigError, match=what):
            Gateway(object(), "!r:x", **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="room id"):
        Gateway(object(), "#alias:x", anonymous="read")  # type: ignore[arg-type]
