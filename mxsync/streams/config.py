"""A publisher's configuration: the keyword arguments of ``client.publisher``, checked.

It owns no changing state: :class:`PublisherConfig` is frozen, built once by
:meth:`PublisherConfig.build`, which raises ConfigError for every invalid
argument before anything else of the publisher exists. The public API, the
pump and the sensor-state sender read their settings from it.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from ..errors import ConfigError
from ..protocol.readings import MIN_BATCH_BYTES, validate_device_id, validate_precision
from ..protocol.types import MAX_CONTENT_BYTES

__all__ = ["OverflowPolicy", "PublisherConfig"]

OverflowPolicy = Literal["block", "drop_oldest"]


class PublisherConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Checked settings of one publisher (durations in seconds; see ``Publisher``)."""

    room_id: str
    device: str
    precision: int | None
    description: str | None
    max_age: float
    max_buffered: int
    overflow: OverflowPolicy
    meta_interval: float
    presence: bool
    last_will: bool
    offline_after: float
    heartbeat: float
    save_interval: float
    window: int
    max_bytes: int
    close_timeout: float
    #: Retain last values in cleartext sensor state (None: only in cleartext rooms).
    last_values: bool | None = None
    #: Take commands (``Publisher.commands``), looking back this far (s) at start.
    commands: bool = True
    command_look_back: float = 3600.0

    @property
    def lane(self) -> str:
        """The outbox lane of this device's readings (one lane: ``seq`` order)."""
        return f"readings/{self.device}"

    @classmethod
    def build(
        cls,
        room_id: str,
        device: str,
        *,
        precision: int | None = None,
        description: str | None = None,
        max_age: float = 1.0,
        max_buffered: int = 1_000_000,
        overflow: OverflowPolicy = "block",
        meta_interval: float = 5.0,
        presence: bool = True,
        last_will: bool = True,
        offline_after: float = 30.0,
        heartbeat: float = 60.0,
        save_interval: float = 0.1,
        window: int = 2,
        max_bytes: int = MAX_CONTENT_BYTES,
        close_timeout: float = 60.0,
        last_values: bool | None = None,
        commands: bool = True,
        command_look_back: float = 3600.0,
    ) -> PublisherConfig:
        """Check every argument (ConfigError names the first bad one) and freeze them."""
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise ConfigError(f"not a room id: {room_id!r}")
        device = validate_device_id(device)
        precision = None if precision is None else validate_precision(precision)
        if description is not None and (
            not isinstance(description, str) or len(description.encode()) > 1024
        ):
            raise ConfigError("description must be a str of at most 1024 bytes of UTF-8")
        for name, v, lo in (
            ("max_age", max_age, 0.0),
            ("meta_interval", meta_interval, 0.0),
            ("save_interval", save_interval, 0.0),
            ("close_timeout", close_timeout, 0.0),
        ):
            if not isinstance(v, int | float) or not lo <= v < math.inf:
                raise ConfigError(f"{name} must be a number >= {lo}, got {v!r}")
        if not isinstance(offline_after, int | float) or not 3.0 <= offline_after <= 86_400:
            raise ConfigError(
                f"offline_after must be within 3..86400 seconds, got {offline_after!r}"
            )
        if not isinstance(heartbeat, int | float) or not 1.0 <= heartbeat <= 86_400:
            raise ConfigError(f"heartbeat must be within 1..86400 seconds, got {heartbeat!r}")
        if type(max_buffered) is not int or max_buffered < 1:
            raise ConfigError(f"max_buffered must be an int >= 1, got {max_buffered!r}")
        if overflow not in ("block", "drop_oldest"):
            raise ConfigError(f"overflow must be 'block' or 'drop_oldest', got {overflow!r}")
        if type(window) is not int or not 1 <= window <= 64:
            raise ConfigError(f"window must be an int within 1..64, got {window!r}")
        if last_values not in (None, True, False):
            raise ConfigError(f"last_values must be None, True or False, got {last_values!r}")
        if commands not in (True, False):
            raise ConfigError(f"commands must be True or False, got {commands!r}")
        look_back = command_look_back
        if not isinstance(look_back, int | float) or not 0 <= look_back <= 30 * 86_400:
            raise ConfigError(
                f"command_look_back must be within 0..2592000 seconds, got {command_look_back!r}"
            )
        if type(max_bytes) is not int or not MIN_BATCH_BYTES <= max_bytes <= MAX_CONTENT_BYTES:
            raise ConfigError(
                f"max_bytes must be within {MIN_BATCH_BYTES}..{MAX_CONTENT_BYTES},"
                f" got {max_bytes!r}"
            )
        return cls(
            room_id=room_id,
            device=device,
            precision=precision,
            description=description,
            max_age=float(max_age),
            max_buffered=max_buffered,
            overflow=overflow,
            meta_interval=float(meta_interval),
            presence=presence,
            last_will=last_will,
            offline_after=float(offline_after),
            heartbeat=float(heartbeat),
            save_interval=float(save_interval),
            window=window,
            max_bytes=max_bytes,
            close_timeout=float(close_timeout),
            last_values=last_values,
            commands=commands,
            command_look_back=float(command_look_back),
        )
