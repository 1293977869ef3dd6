"""Event type names mxsync puts on the wire, and the limits every event obeys.

This module is the single list of mxsync's namespace. The sync filter, the
power levels written by ``Client.create_room`` and the feature modules all take
their names from here, so adding an event type means adding it here.
"""

from __future__ import annotations

__all__ = [
    "NAMESPACE",
    "DOC",
    "DOC_UPDATE",
    "DOC_SNAPSHOT",
    "DOC_REQUEST",
    "DOC_AWARENESS",
    "DOC_LIVE",
    "TO_DEVICE_TYPES",
    "MEMBER_TYPES",
    "room_power_levels",
    "READINGS",
    "SENSOR",
    "DEVICE",
    "COMMAND",
    "COMMAND_RESULT",
    "STATE_TYPES",
    "TIMELINE_TYPES",
    "ALL_TYPES",
    "MAX_EVENT_BYTES",
    "MAX_CONTENT_BYTES",
    "MAX_SAFE_INT",
    "POWER_LEVELS",
    "CREATE",
    "ENCRYPTION",
    "ENCRYPTED",
    "MEMBER",
    "MAX_ENCRYPTED_CONTENT_BYTES",
    "encrypted_content_bytes",
]

NAMESPACE = "org.mxsync"

#: State event declaring a CRDT document; state_key is the document name.
DOC = "org.mxsync.doc"
#: Timeline event carrying a Yjs v1 update (or one chunk of it).
DOC_UPDATE = "org.mxsync.doc.update"
#: Timeline event carrying a full-state snapshot (or one chunk of it).
DOC_SNAPSHOT = "org.mxsync.doc.snapshot"
#: Timeline event by which a member who cannot read a document's history (it
#: joined an encrypted room after it was written) asks writers for a snapshot.
DOC_REQUEST = "org.mxsync.doc.request"
#: To-device message: awareness states (y-protocols encoding) of a document's open
#: replicas, and the announcements by which they find each other (never in a room).
DOC_AWARENESS = "org.mxsync.doc.awareness"
#: To-device message: a local update batch sent at once to the devices that have
#: the document open, ahead of (never instead of) its timeline event.
DOC_LIVE = "org.mxsync.doc.live"
#: Timeline event carrying a batch of sensor readings.
READINGS = "org.mxsync.readings"
#: State event describing one sensor and its last known value; state_key is the sensor id.
SENSOR = "org.mxsync.sensor"
#: State event announcing a device (birth / last will); state_key is the device id.
DEVICE = "org.mxsync.device"
#: Timeline event asking one device to run a command (section 4).
COMMAND = "org.mxsync.command"
#: Timeline event by which a device acknowledges a command with its result or error.
COMMAND_RESULT = "org.mxsync.command.result"

#: The Matrix state events mxsync reads to judge whose events count.
POWER_LEVELS = "m.room.power_levels"
CREATE = "m.room.create"
#: State event that makes a room end-to-end encrypted (megolm); never removed.
ENCRYPTION = "m.room.encryption"
#: The type every timeline event of an encrypted room travels as.
ENCRYPTED = "m.room.encrypted"
#: Membership: an encrypted room's sessions go to its members' devices.
MEMBER = "m.room.member"

STATE_TYPES: tuple[str, ...] = (DOC, SENSOR, DEVICE)
TIMELINE_TYPES: tuple[str, ...] = (DOC_UPDATE, DOC_SNAPSHOT, READINGS, COMMAND, COMMAND_RESULT)
ALL_TYPES: tuple[str, ...] = STATE_TYPES + TIMELINE_TYPES
#: mxsync's to-device message types (not room events: no power levels apply).
TO_DEVICE_TYPES: tuple[str, ...] = (DOC_AWARENESS, DOC_LIVE)
#: mxsync's types that every member may send (power level 0), readers included.
MEMBER_TYPES: tuple[str, ...] = (DOC_REQUEST,)


def room_power_levels(users: dict[str, int]) -> dict[str, object]:
    """The ``m.room.power_levels`` an mxsync room starts with (PROTOCOL.md 1.3),
    as a ``createRoom`` ``power_level_content_override``: ``users`` at their
    levels, everyone else 0; every event type needs a writer's level (50) unless
    listed otherwise (mxsync's types are listed anyway, so the intent is
    explicit), members' types 0, power levels 100."""
    return {
        "users": dict(users),
        "users_default": 0,
        "events_default": 50,
        "state_default": 50,
        "events": {
            **{t: 50 for t in ALL_TYPES},
            **{t: 0 for t in MEMBER_TYPES},
            POWER_LEVELS: 100,
            "m.room.name": 50,
        },
    }

#: Synapse refuses a PDU whose canonical JSON (signatures, hashes, envelope
#: included) exceeds this many bytes.
MAX_EVENT_BYTES = 65_536
#: What we allow the *content* of one event to take. The envelope (room id,
#: sender, auth/prev events, hashes, signatures, unsigned) of a Synapse event
#: is about 1-2 KB; 8 KiB of margin keeps us clear of the limit even with long
#: room and user ids.
MAX_CONTENT_BYTES = MAX_EVENT_BYTES - 8_192
#: Canonical JSON refuses integers outside +-(2**53 - 1).
MAX_SAFE_INT = 2**53 - 1


# -- the encrypted envelope -----------------------------------------------------
#
# In an encrypted room the content the server sees is the megolm envelope
# ``{"algorithm", "sender_key", "ciphertext", "session_id", "device_id"}``; the
# plaintext ``{"type": T, "content": C, "room_id": R}`` (compact JSON) becomes
# the ciphertext: AES-256-CBC (PKCS#7 pads to the next 16 bytes, 1..16 added),
# framed as a version byte, the protobuf fields message index (tag + varint of
# up to 5 bytes) and ciphertext (tag + varint length of up to 3 bytes), an
# 8-byte MAC and a 64-byte Ed25519 signature; then unpadded base64 (4 characters
# per 3 bytes, rounded up). So for a content of n JSON bytes the envelope is
#   4/3 * (n + plaintext fields + 16 + framing) + envelope fields
# and the content budget is that relation solved for n under MAX_CONTENT_BYTES.

#: ``{"type":"","content":,"room_id":""}``: the plaintext around the content.
_PLAINTEXT_FIELDS = 35
#: Longest event type mxsync encrypts plus the longest room id (255, the spec's
#: limit on a room id).
_PLAINTEXT_NAMES = 64 + 255
#: Version byte, index field (1 + 5), ciphertext field header (1 + 3), the MAC
#: (8) and the signature (64), and the worst padding (16).
_MEGOLM_FRAMING = 1 + 6 + 4 + 8 + 64 + 16
#: ``{"algorithm":"m.megolm.v1.aes-sha2","sender_key":"","ciphertext":"",
#: "session_id":"","device_id":""}`` (99) with the two 43-character keys and a
#: device id of up to 255 characters.
_ENVELOPE_FIELDS = 99 + 43 + 43 + 255


def encrypted_content_bytes(n: int) -> int:
    """The most bytes the megolm envelope of an ``n``-byte content takes (an upper bound)."""
    plaintext = n + _PLAINTEXT_FIELDS + _PLAINTEXT_NAMES + _MEGOLM_FRAMING
    return -(-plaintext * 4 // 3) + _ENVELOPE_FIELDS


#: The content budget of one event in an encrypted room: the largest n with
#: ``encrypted_content_bytes(n) <= MAX_CONTENT_BYTES`` (about 3/4 of it).
MAX_ENCRYPTED_CONTENT_BYTES = (
    (MAX_CONTENT_BYTES - _ENVELOPE_FIELDS) * 3 // 4
    - _PLAINTEXT_FIELDS - _PLAINTEXT_NAMES - _MEGOLM_FRAMING
)
