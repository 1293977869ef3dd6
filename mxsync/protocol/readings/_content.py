"""Single contents across the trust boundary.

Owns the way in for untrusted content (:func:`parse_batch`, :func:`decode_batch`,
:func:`decode_sensor_meta`, :func:`decode_device_state`: ProtocolError and
nothing else, invariant 4) and the way out (:func:`to_content`: checked,
canonical-JSON safe and within MAX_CONTENT_BYTES, invariants 1 and 5), with
the JSON encoder that measures contents.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ...errors import ConfigError, ProtocolError
from ..types import MAX_CONTENT_BYTES, MAX_SAFE_INT
from ._schema import (
    DeviceState,
    Reading,
    ReadingsBatch,
    SensorMeta,
    _check_batch,
    _check_device_state,
    _check_sensor_meta,
    _Content,
    _unpack,
)
from ._values import _short

_JSON: Final = msgspec.json.Encoder()


def _convert(content: object, cls: type[Any], what: str) -> Any:
    if type(content) is not dict:
        raise ProtocolError(f"{what} content must be a JSON object, not {type(content).__name__}")
    v = content.get("v", 1)
    if type(v) is not int or v != 1:
        raise ProtocolError(f"unsupported {what} version {_short(v)}; this mxsync reads version 1")
    try:
        return msgspec.convert(content, cls)
    except msgspec.ValidationError as e:
        raise ProtocolError(f"malformed {what} content: {e}") from None
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise ProtocolError(f"malformed {what} content: {e!r}") from None


def parse_batch(content: object) -> ReadingsBatch:
    """Validate an ``org.mxsync.readings`` content and return its header and
    packed data without unpacking (enough to check device and seq for gaps or
    duplicates). Raises ProtocolError."""
    batch: ReadingsBatch = _convert(content, ReadingsBatch, "readings")
    _check_batch(batch, ProtocolError)
    return batch


def decode_batch(content: object) -> list[Reading]:
    """The readings of an ``org.mxsync.readings`` content, series by series.

    Strict: anything malformed raises ProtocolError, and nothing else is raised.
    """
    return _unpack(parse_batch(content))


def decode_sensor_meta(content: object) -> SensorMeta:
    """Validate an ``org.mxsync.sensor`` content. Raises ProtocolError."""
    meta: SensorMeta = _convert(content, SensorMeta, "sensor")
    _check_sensor_meta(meta, ProtocolError)
    return meta


def decode_device_state(content: object) -> DeviceState:
    """Validate an ``org.mxsync.device`` content. Raises ProtocolError."""
    state: DeviceState = _convert(content, DeviceState, "device")
    _check_device_state(state, ProtocolError)
    return state


def _json_safe(x: object) -> bool:
    """True if x is made of dict/list/str/bool/None and safe ints only."""
    t = type(x)
    if t is str or t is bool or x is None:
        return True
    if t is int:
        return -MAX_SAFE_INT <= x <= MAX_SAFE_INT  # type: ignore[operator]
    if t is list:
        return all(_json_safe(i) for i in x)  # type: ignore[attr-defined]
    if t is dict:
        return all(type(k) is str and _json_safe(i) for k, i in x.items())  # type: ignore[attr-defined]
    return False


def _builtins(obj: _Content) -> dict[str, Any]:
    content: dict[str, Any] = msgspec.to_builtins(obj)
    if not _json_safe(content):
        raise AssertionError(f"internal error: {type(obj).__name__} content is not canonical JSON")
    return content


def to_content(obj: ReadingsBatch | SensorMeta | DeviceState) -> dict[str, Any]:
    """The JSON-ready content dict of a struct, validated. Raises ConfigError."""
    match obj:
        case ReadingsBatch():
            _check_batch(obj, ConfigError)
        case SensorMeta():
            _check_sensor_meta(obj, ConfigError)
        case DeviceState():
            _check_device_state(obj, ConfigError)
        case _:
            raise ConfigError(f"cannot make a content of {type(obj).__name__}")
    content = _builtins(obj)
    size = len(_JSON.encode(content))
    if size > MAX_CONTENT_BYTES:
        raise ConfigError(f"content is {size} bytes; at most {MAX_CONTENT_BYTES}")
    return content
