"""Commands to devices and their acknowledgements: the two contents, checked (sans-I/O).

Owns the wire form of ``org.mxsync.command`` and ``org.mxsync.command.result``
(docs/PROTOCOL.md section 6): building a content (``ConfigError`` on a bad
argument, nothing is sent) and reading one (``ProtocolError`` on a malformed
content, which readers skip).

Invariants:
- A command is identified by its ``id`` alone: every result for that id is the
  result of the one execution (a retry of the same id never runs again).
- ``expires_ms`` is an absolute time; a device MUST NOT start a command after it.
- Contents are canonical JSON: no floats anywhere in ``args`` or ``result``,
  integers within +-(2^53 - 1); a content stays within ``MAX_PAYLOAD_BYTES``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from ..errors import ConfigError, ProtocolError
from .readings._limits import MAX_T_MS
from .types import MAX_SAFE_INT

__all__ = [
    "REBIRTH",
    "MAX_PAYLOAD_BYTES",
    "CommandContent",
    "ResultContent",
    "ResultStatus",
    "check_json",
    "command_content",
    "decode_command",
    "decode_result",
    "result_content",
    "validate_command_id",
    "validate_command_name",
]

#: The command every mxsync device answers itself: re-announce its birth,
#: sensor metadata and last values (Sparkplug's "Node Control/Rebirth").
REBIRTH = "rebirth"
#: Bytes the compact JSON of ``args`` or ``result`` may take.
MAX_PAYLOAD_BYTES = 16_384
#: Bytes an error text may take.
MAX_ERROR_BYTES = 1_024

ResultStatus = Literal["ok", "error", "expired", "interrupted"]
_STATUSES = frozenset(("ok", "error", "expired", "interrupted"))

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")

_encoder = msgspec.json.Encoder()


class CommandContent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``org.mxsync.command``: run ``name`` with ``args`` on ``device``."""

    v: int = 1
    id: str
    device: str
    name: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    issued_ms: int
    expires_ms: int


class ResultContent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``org.mxsync.command.result``: what became of command ``id``."""

    v: int = 1
    id: str
    device: str
    status: str
    result: Any = None
    error: str | None = None
    done_ms: int


def check_json(value: Any, what: str, *, exc: type[Exception] = ConfigError,
               depth: int = 0) -> None:
    """Raise ``exc`` unless ``value`` is canonical JSON (no floats, safe integers)."""
    if depth > 32:
        raise exc(f"{what} nests too deeply")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise exc(f"{what}: integer {value} is outside +-(2^53 - 1)")
        return
    if isinstance(value, float):
        raise exc(f"{what}: floats cannot travel in Matrix events ({value!r}); "
                  "send an integer with a scale or a string")
    if isinstance(value, list | tuple):
        for item in value:
            check_json(item, what, exc=exc, depth=depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise exc(f"{what}: object keys must be str, got {k!r}")
            check_json(item, what, exc=exc, depth=depth + 1)
        return
    raise exc(f"{what}: {type(value).__name__} is not JSON")


def _check_size(value: Any, what: str, exc: type[Exception]) -> None:
    if len(_encoder.encode(value)) > MAX_PAYLOAD_BYTES:
        raise exc(f"{what} takes more than {MAX_PAYLOAD_BYTES} bytes of JSON")


def validate_command_id(cid: object) -> str:
    if not isinstance(cid, str) or not _ID.match(cid):
        raise ConfigError(f"a command id is 1-128 of A-Z a-z 0-9 _ . : - "
                          f"(first a letter or digit), got {cid!r}")
    return cid


def validate_command_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"a command name is 1-64 of A-Z a-z 0-9 _ . : / - "
                          f"(first a letter or digit), got {name!r}")
    return name


def command_content(
    cid: str, device: str, name: str, args: dict[str, Any] | None, *,
    issued_ms: int, expires_ms: int,
) -> dict[str, Any]:
    """The content of one command; ConfigError for a bad argument."""
    validate_command_id(cid)
    validate_command_name(name)
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ConfigError(f"not a device id: {device!r}")
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise ConfigError(f"args must be a dict, got {type(args).__name__}")
    check_json(args, "args")
    _check_size(args, "args", ConfigError)
    if not 0 <= issued_ms <= expires_ms <= MAX_T_MS:
        raise ConfigError(f"expiry must lie after the issue time ({issued_ms}, {expires_ms})")
    return msgspec.to_builtins(CommandContent(
        id=cid, device=device, name=name, args=args, issued_ms=issued_ms,
        expires_ms=expires_ms,
    ))


def result_content(
    cid: str, device: str, status: ResultStatus, *, done_ms: int,
    result: Any = None, error: str | None = None,
) -> dict[str, Any]:
    """The content of one acknowledgement; ConfigError if ``result`` is not canonical JSON."""
    if status not in _STATUSES:
        raise ConfigError(f"unknown result status {status!r}")
    check_json(result, "result")
    _check_size(result, "result", ConfigError)
    if error is not None:
        error = error.encode()[:MAX_ERROR_BYTES].decode(errors="ignore") or "error"
    return msgspec.to_builtins(ResultContent(
        id=cid, device=device, status=status, result=result, error=error, done_ms=done_ms,
    ))


def _ms(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_T_MS:
        raise ProtocolError(f"{what} is not a time in ms: {value!r}")
    return value


def decode_command(content: dict[str, Any]) -> CommandContent:
    """Read a command content; ProtocolError when it is malformed or of another version."""
    try:
        cmd = msgspec.convert(content, CommandContent)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"malformed command: {exc}") from None
    if cmd.v != 1:
        raise ProtocolError(f"command version {cmd.v} is not known")
    if not _ID.match(cmd.id) or not _NAME.match(cmd.name) or not _DEVICE.match(cmd.device):
        raise ProtocolError("command id, name or device is malformed")
    _ms(cmd.issued_ms, "issued_ms")
    _ms(cmd.expires_ms, "expires_ms")
    check_json(cmd.args, "args", exc=ProtocolError)
    return cmd


def decode_result(content: dict[str, Any]) -> ResultContent:
    """Read a result content; ProtocolError when it is malformed or of another version."""
    try:
        res = msgspec.convert(content, ResultContent)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"malformed command result: {exc}") from None
    if res.v != 1:
        raise ProtocolError(f"command result version {res.v} is not known")
    if not _ID.match(res.id) or not _DEVICE.match(res.device):
        raise ProtocolError("command result id or device is malformed")
    if res.status not in _STATUSES:
        raise ProtocolError(f"unknown command result status {res.status!r}")
    _ms(res.done_ms, "done_ms")
    return res
