"""PublisherConfig: every bad keyword argument of a publisher fails at construction."""

from __future__ import annotations

import msgspec
import pytest

from mxsync import ConfigError
from mxsync.streams import PublisherStatistics, SubscriberStatistics
from mxsync.streams.config import PublisherConfig

ROOM = "!room:example.org"


def test_defaults_are_checked_and_frozen() -> None:
    cfg = PublisherConfig.build(ROOM, "boiler-1")
    assert (cfg.max_age, cfg.max_buffered, cfg.overflow, cfg.window) == (1.0, 1_000_000,
                                                                         "block", 2)
    assert cfg.lane == "readings/boiler-1"
    with pytest.raises(AttributeError):
        cfg.max_age = 2.0  # type: ignore[misc]


def test_durations_become_floats() -> None:
    cfg = PublisherConfig.build(ROOM, "d", max_age=3, save_interval=0, close_timeout=1)
    assert type(cfg.max_age) is float and type(cfg.save_interval) is float


@pytest.mark.parametrize("kw", [
    {"room_id": "#alias:example.org"},
    {"device": ""},
    {"precision": 10},
    {"description": "x" * 1025},
    {"max_age": -1},
    {"max_age": float("inf")},
    {"offline_after": 2},
    {"heartbeat": 0.5},
    {"max_buffered": 0},
    {"max_buffered": 1.5},
    {"overflow": "drop_newest"},
    {"window": 65},
    {"max_bytes": 10},
])
def test_bad_arguments_raise_config_error(kw: dict[str, object]) -> None:
    args = {"room_id": ROOM, "device": "d"}
    for k in ("room_id", "device"):
        if k in kw:
            args[k] = kw.pop(k)  # type: ignore[assignment]
    with pytest.raises(ConfigError):
        PublisherConfig.build(args["room_id"], args["device"], **kw)  # type: ignore[arg-type]


def test_an_unknown_argument_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        PublisherConfig.build(ROOM, "d", max_agee=1.0)  # type: ignore[call-arg]


def test_statistics_are_frozen_structs_that_serialise_as_dicts() -> None:
    sub = SubscriberStatistics(batches=1, readings=2, duplicates=0, gaps=0, missing_batches=0,
                               malformed=0, forbidden=0, lost_device_changes=0)
    assert msgspec.to_builtins(sub)["readings"] == 2
    fields = PublisherStatistics.__struct_fields__
    assert {"published", "sealed_pending", "bytes_per_reading", "presence"} <= set(fields)
