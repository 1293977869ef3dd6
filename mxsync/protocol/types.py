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
    "READINGS",
    "SENSOR",
    "DEVICE",
    "STATE_TYPES",
    "TIMELINE_TYPES",
    "ALL_TYPES",
    "MAX_EVENT_BYTES",
    "MAX_CONTENT_BYTES",
    "MAX_SAFE_INT",
    "POWER_LEVELS",
    "CREATE",
]

NAMESPACE = "org.mxsync"

#: State event declaring a CRDT document; state_key is the document name.
DOC = "org.mxsync.doc"
#: Timeline event carrying a Yjs v1 update (or one chunk of it).
DOC_UPDATE = "org.mxsync.doc.update"
#: Timeline event carrying a full-state snapshot (or one chunk of it).
DOC_SNAPSHOT = "org.mxsync.doc.snapshot"
#: Timeline event carrying a batch of sensor readings.
READINGS = "org.mxsync.readings"
#: State event describing one sensor and its last known value; state_key is the sensor id.
SENSOR = "org.mxsync.sensor"
#: State event announcing a device (birth / last will); state_key is the device id.
DEVICE = "org.mxsync.device"

#: The Matrix state events mxsync reads to judge whose events count.
POWER_LEVELS = "m.room.power_levels"
CREATE = "m.room.create"

STATE_TYPES: tuple[str, ...] = (DOC, SENSOR, DEVICE)
TIMELINE_TYPES: tuple[str, ...] = (DOC_UPDATE, DOC_SNAPSHOT, READINGS)
ALL_TYPES: tuple[str, ...] = STATE_TYPES + TIMELINE_TYPES

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
