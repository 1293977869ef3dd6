"""The reading codec: IoT sensor readings packed exactly into Matrix event contents.

This package owns the contents of three event types (names in ``protocol.types``):

* ``org.mxsync.readings`` (timeline): :class:`ReadingsBatch`, thousands of
  readings of one device in one event, columnar per sensor, delta coded,
  zlib-compressed when that pays, carried as base64 in one string;
* ``org.mxsync.sensor`` (state, state_key = sensor id): :class:`SensorMeta`,
  what a sensor measures and its last value;
* ``org.mxsync.device`` (state, state_key = device id): :class:`DeviceState`,
  birth, heartbeat and last will of a device;

and :class:`BatchEncoder`, the small state machine a publisher feeds readings
into and takes event contents out of. Sans-I/O: no clock (times are passed in),
no network, no event loop. The normative text is docs/PROTOCOL.md ("Sensor
readings"); the byte layout described there is implemented here.

Invariants:

1. Every content produced here is canonical-JSON safe: dicts, lists, str, int
   and bool only, no float anywhere, every int within +-(2**53 - 1).
2. ``BatchEncoder.encode`` never returns a content whose JSON encoding is longer
   than the encoder's ``max_bytes`` (at most ``MAX_CONTENT_BYTES``). When its
   estimate was off it takes fewer readings; the rest stay buffered, in order.
3. Exactness. int, bool and str values come back identical (and with the same
   type: a bool is never an int here). A float ``v`` sent with precision ``p``
   travels as the integer mantissa ``m`` nearest to ``v * 10**p`` (on the exact
   binary value, ties to even) and comes back as the float ``m / 10**p``, which
   equals ``round(v, p)``. With no precision the shortest decimal that
   round-trips (``repr``) is sent, so the float comes back identical, and a
   float that needs more than 9 decimals is refused rather than rounded.
4. Decoding untrusted content raises :class:`~mxsync.errors.ProtocolError` and
   nothing else, and its work is bounded: at most ``MAX_BATCH_READINGS``
   readings and ``MAX_RAW_BYTES`` of decompressed data per event.
5. A bad argument raises :class:`~mxsync.errors.ConfigError` at the call that
   received it (``add``, ``encode_value``, ``to_content``), never later.

Layout (imports flow down this list, never up):

* ``_limits``: the numbers the spec fixes (times, sizes, counts);
* ``_values``: ids and validation, the exact wire form of one value
  (:func:`encode_value`, :func:`decode_value`);
* ``_packing``: the byte layout of the packed columns (zigzag varints, bit
  and length-prefixed columns, the zlib bomb cap), knowing no structs;
* ``_schema``: the msgspec structs of the three contents and the checks that
  make one valid; :meth:`ReadingsBatch.readings` unpacks through ``_packing``;
* ``_content``: untrusted content in (:func:`parse_batch`, ``decode_*``) and
  validated content out (:func:`to_content`);
* ``_encoder``: :class:`BatchEncoder`, filling contents up to a byte budget.
"""

from __future__ import annotations

from ._content import decode_batch as decode_batch
from ._content import decode_device_state as decode_device_state
from ._content import decode_sensor_meta as decode_sensor_meta
from ._content import parse_batch as parse_batch
from ._content import to_content as to_content
from ._encoder import BatchEncoder as BatchEncoder
from ._limits import MAX_BATCH_READINGS as MAX_BATCH_READINGS
from ._limits import MAX_DESCRIPTION_BYTES as MAX_DESCRIPTION_BYTES
from ._limits import MAX_NAME_BYTES as MAX_NAME_BYTES
from ._limits import MAX_PRECISION as MAX_PRECISION
from ._limits import MAX_RAW_BYTES as MAX_RAW_BYTES
from ._limits import MAX_REASON_BYTES as MAX_REASON_BYTES
from ._limits import MAX_SERIES as MAX_SERIES
from ._limits import MAX_STR_BYTES as MAX_STR_BYTES
from ._limits import MAX_T_MS as MAX_T_MS
from ._limits import MAX_UNIT_BYTES as MAX_UNIT_BYTES
from ._limits import MIN_BATCH_BYTES as MIN_BATCH_BYTES
from ._limits import MIN_T_MS as MIN_T_MS
from ._schema import MAX_ENUM_VALUES as MAX_ENUM_VALUES
from ._schema import SENSOR_KINDS as SENSOR_KINDS
from ._schema import DeviceState as DeviceState
from ._schema import Reading as Reading
from ._schema import ReadingsBatch as ReadingsBatch
from ._schema import SensorMeta as SensorMeta
from ._schema import Series as Series
from ._values import KINDS as KINDS
from ._values import EncodedValue as EncodedValue
from ._values import Kind as Kind
from ._values import Value as Value
from ._values import decode_value as decode_value
from ._values import encode_value as encode_value
from ._values import validate_device_id as validate_device_id
from ._values import validate_precision as validate_precision
from ._values import validate_sensor_id as validate_sensor_id
from ._values import validate_t_ms as validate_t_ms
from ._values import validate_unit as validate_unit
from ._values import validate_value as validate_value

__all__ = [
    "Value",
    "Kind",
    "KINDS",
    "MIN_T_MS",
    "MAX_T_MS",
    "MAX_PRECISION",
    "MAX_STR_BYTES",
    "MAX_UNIT_BYTES",
    "MAX_NAME_BYTES",
    "MAX_DESCRIPTION_BYTES",
    "MAX_REASON_BYTES",
    "MAX_BATCH_READINGS",
    "MAX_SERIES",
    "MAX_RAW_BYTES",
    "MIN_BATCH_BYTES",
    "Reading",
    "Series",
    "ReadingsBatch",
    "SensorMeta",
    "SENSOR_KINDS",
    "MAX_ENUM_VALUES",
    "DeviceState",
    "EncodedValue",
    "BatchEncoder",
    "validate_sensor_id",
    "validate_device_id",
    "validate_unit",
    "validate_precision",
    "validate_t_ms",
    "validate_value",
    "encode_value",
    "decode_value",
    "parse_batch",
    "decode_batch",
    "decode_sensor_meta",
    "decode_device_state",
    "to_content",
]
