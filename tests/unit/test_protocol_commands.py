"""The command and result contents (PROTOCOL.md section 4): built, checked, read back."""

from __future__ import annotations

import pytest

from mxsync.errors import ConfigError, ProtocolError
from mxsync.protocol.commands import (
    command_content,
    decode_command,
    decode_result,
    result_content,
)


def test_a_command_reads_back_as_written():
    c = command_content("c1", "boiler-1", "set_point", {"target": 215, "scale": -1},
                        issued_ms=1_700_000_000_000, expires_ms=1_700_000_060_000)
    assert c == {"id": "c1", "device": "boiler-1", "name": "set_point",
                 "args": {"target": 215, "scale": -1}, "issued_ms": 1_700_000_000_000,
                 "expires_ms": 1_700_000_060_000}
    cmd = decode_command(c)
    assert (cmd.id, cmd.name, cmd.args["target"]) == ("c1", "set_point", 215)


def test_results_read_back_and_an_error_is_kept_as_text():
    ok = result_content("c1", "boiler-1", "ok", done_ms=5, result={"now": 215})
    assert ok == {"id": "c1", "device": "boiler-1", "status": "ok", "result": {"now": 215},
                  "done_ms": 5}
    assert decode_result(ok).result == {"now": 215}
    err = decode_result(result_content("c2", "d", "error", done_ms=6, error="valve stuck"))
    assert (err.status, err.error) == ("error", "valve stuck")


@pytest.mark.parametrize("args", [{"x": 0.5}, {"x": [1, {"y": 2**53}]}, {1: 2}, "text"])
def test_arguments_that_cannot_travel_are_refused_before_sending(args):
    with pytest.raises(ConfigError):
        command_content("c1", "d", "n", args, issued_ms=1, expires_ms=2)


@pytest.mark.parametrize("bad", [
    {"id": "c1", "device": "d", "name": "n", "issued_ms": 1},  # no expiry
    {"id": "c1", "device": "d", "name": "n", "issued_ms": 1, "expires_ms": 2, "v": 2},
    {"id": "", "device": "d", "name": "n", "issued_ms": 1, "expires_ms": 2},
    {"id": "c1", "device": "d", "name": "n", "issued_ms": 1, "expires_ms": -2},
    {"id": "c1", "device": "d", "name": "n", "issued_ms": 1, "expires_ms": 2, "args": []},
])
def test_malformed_commands_are_protocol_errors(bad):
    with pytest.raises(ProtocolError):
        decode_command(bad)


def test_unknown_result_status_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        decode_result({"id": "c1", "device": "d", "status": "maybe", "done_ms": 1})
