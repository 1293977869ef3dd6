"""The content budget of encrypted rooms, checked against nio's real megolm encryption."""

from __future__ import annotations

import json
import secrets

from nio.api import Api
from nio.crypto import OutboundGroupSession

from mxsync.protocol import docs as proto
from mxsync.protocol.docs import content_size
from mxsync.protocol.types import (
    MAX_CONTENT_BYTES,
    MAX_ENCRYPTED_CONTENT_BYTES,
    encrypted_content_bytes,
)


def _envelope_bytes(content: dict[str, object], event_type: str, room_id: str) -> int:
    """What nio's ``group_encrypt`` puts on the wire for ``content``, in bytes."""
    session = OutboundGroupSession()
    session.shared = True
    plaintext = {"type": event_type, "content": content, "room_id": room_id}
    payload = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "sender_key": "k" * 43,
        "ciphertext": session.encrypt(Api.to_json(plaintext)),
        "session_id": session.id,
        "device_id": "D" * 255,
    }
    return len(json.dumps(payload, separators=(",", ":")).encode())


def test_a_full_budget_content_encrypts_within_the_content_limit() -> None:
    room_id = "!" + "r" * 250 + ":x.y"  # 255 characters, the longest a room id may be
    event_type = "org.mxsync." + "t" * 53  # 64 characters
    filler = MAX_ENCRYPTED_CONTENT_BYTES - len('{"d":""}')
    content = {"d": secrets.token_urlsafe(filler)[:filler]}
    assert len(json.dumps(content, separators=(",", ":"))) == MAX_ENCRYPTED_CONTENT_BYTES
    size = _envelope_bytes(content, event_type, room_id)
    assert size <= encrypted_content_bytes(MAX_ENCRYPTED_CONTENT_BYTES) <= MAX_CONTENT_BYTES
    # The bound is tight: less than one padding block plus rounding is given away.
    assert MAX_CONTENT_BYTES - size < 200


def test_the_bound_holds_for_every_size() -> None:
    for n in (10, 1_000, 16_383, 30_001, 42_000):
        content = {"d": "a" * (n - len('{"d":""}'))}
        assert _envelope_bytes(content, "org.mxsync.readings", "!r:x") <= encrypted_content_bytes(n)


def test_document_chunks_obey_a_lower_budget() -> None:
    update = secrets.token_bytes(200_000)
    contents = proto.encode_update("d", update, max_bytes=MAX_ENCRYPTED_CONTENT_BYTES)
    assert len(contents) > 1
    assert all(content_size(c) <= MAX_ENCRYPTED_CONTENT_BYTES for c in contents)
    plain = proto.encode_update("d", update)
    assert len(plain) < len(contents)


def test_non_ascii_readings_fill_a_batch_that_still_fits_once_escaped() -> None:
    """nio re-encodes the plaintext with ``ensure_ascii`` (``\\uXXXX``, up to 12
    bytes for a 4-byte character). Readings' values travel packed (base64), so
    only headers (units) can hold non-ASCII: a batch full of non-ASCII strings
    under a non-ASCII unit still fits the event limit once encrypted."""
    import msgspec

    from mxsync.protocol.readings import BatchEncoder

    enc = BatchEncoder(max_bytes=MAX_ENCRYPTED_CONTENT_BYTES, compression_level=0)
    i = 0
    while not enc.would_overflow():
        enc.add("s", 1_700_000_000_000 + i, "€😀é" * 20 + str(i), unit="µ°😀")
        i += 1
    content = msgspec.json.decode(msgspec.json.encode(enc.encode("d", 0)))
    escaped = json.dumps(content, separators=(",", ":"))
    assert escaped.isascii()
    assert len(escaped) <= MAX_ENCRYPTED_CONTENT_BYTES
    assert _envelope_bytes(content, "org.mxsync.readings", "!r:x") <= MAX_CONTENT_BYTES
