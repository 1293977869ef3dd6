"""What a newcomer meets first, without a server: the first sync of a run does not
long-poll, the level a declaration takes, the command's error said once, a demo
that outlives its reader, tables that fit 100 columns."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from mxsync.cli.common import run_command
from mxsync.cli.doc import stats_table
from mxsync.cli.room import full_user_id
from mxsync.dev import DevServer, DevServerError
from mxsync.dev.demo import sayer, write_logins
from mxsync.dev.server import Credentials
from mxsync.engine.authz import levels_for
from mxsync.engine.store import Store
from mxsync.engine.sync import SyncLoop
from mxsync.errors import ConfigError, ForbiddenError


class RecordingHttp:
    """Answers every /sync with an empty batch; keeps the timeouts asked for."""

    def __init__(self) -> None:
        self.timeouts: list[int] = []

    async def call(self, req: Any, http_timeout: float | None = None) -> dict[str, Any]:
        self.timeouts.append(req.query["timeout"])
        return {"next_batch": f"s{len(self.timeouts)}"}


@pytest.mark.anyio
@pytest.mark.parametrize("stored", [None, b"s0"])
async def test_the_first_sync_of_a_run_never_long_polls(stored):
    store = Store(None)
    await store.open()
    try:
        if stored is not None:
            await store.kv_set("sync", "since", stored)  # a returning client
        http = RecordingHttp()
        loop = SyncLoop(http, store, timeout_ms=30_000)  # type: ignore[arg-type]
        await loop._load()
        await loop.sync_once()
        await loop.sync_once()
        assert http.timeouts == [0, 30_000]
    finally:
        await store.close()


def test_levels_for_names_the_level_a_state_event_needs():
    pl = {"users": {"@w:x": 50}, "state_default": 50, "events": {"org.mxsync.doc": 60}}
    assert levels_for(pl, "@r:x", "org.mxsync.doc", state=True) == (0, 60)
    assert levels_for(pl, "@w:x", "org.mxsync.other", state=True) == (50, 50)
    assert levels_for(None, "@r:x", "org.mxsync.doc", state=True) == (0, 0)


def test_a_failed_command_says_its_error_once(capsys, caplog):
    async def refused() -> None:
        logging.getLogger("mxsync.outbox").error("refused for good: M_FORBIDDEN")
        raise ForbiddenError(403, "M_FORBIDDEN", "no power")

    with caplog.at_level(logging.WARNING):
        assert run_command("mxsync x", refused) == 1
    assert capsys.readouterr().err == "mxsync x: 403 M_FORBIDDEN: no power\n"
    assert "refused for good" not in caplog.text


def test_a_successful_command_still_shows_the_errors_logged_on_the_way(caplog):
    async def fine() -> int:
        logging.getLogger("mxsync.docs").error("a snapshot was refused")
        return 0

    with caplog.at_level(logging.WARNING):
        assert run_command("mxsync x", fine) == 0
    assert "a snapshot was refused" in caplog.text


def test_say_goes_quiet_once_the_reader_is_gone():
    r, w = os.pipe()
    out = os.fdopen(w, "w")
    os.close(r)
    say = sayer(out)
    say("homeserver ...")  # EPIPE: swallowed, and nothing more is tried
    say("stopping ...")
    with pytest.raises(BrokenPipeError):
        out.close()


def test_the_demo_logins_file_is_private(tmp_path: Path):
    path = tmp_path / "logins.env"
    path.write_text("old")
    path.chmod(0o644)
    creds = {"alice": Credentials("@alice:localhost", "pw", "tok", "DEV", "http://h")}
    write_logins(path, "http://h", creds)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "MXSYNC_USER=@alice:localhost\nMXSYNC_PASSWORD=pw" in text
    assert "tok" not in text


def test_doc_stats_fits_100_columns():
    from rich.console import Console

    stats = {"declared": True, "update_events": 123_456, "update_chunk_events": 12,
             "update_payload_bytes": 98_765_432, "snapshots": 3, "snapshot_events": 9,
             "updates_since_snapshot": 40, "last_snapshot_state_bytes": None,
             "content_bytes": 123_456_789, "malformed_events": 0, "senders": 2}
    out = io.StringIO()
    Console(file=out, width=100).print(
        stats_table("!room:localhost", {"whiteboard": stats, "notes": dict(stats)}))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "…" not in out.getvalue()
    assert any("updates since snapshot" in line for line in lines)


def test_user_ids_without_a_server_take_the_server_of_the_user():
    assert full_user_id("bob", "@alice:example.org") == "@bob:example.org"
    assert full_user_id("@bob:other", "@alice:example.org") == "@bob:other"
    with pytest.raises(ConfigError):
        full_user_id("bob", None)


@pytest.mark.anyio
async def test_attach_without_a_running_devserver_says_how_to_start_one(tmp_path: Path):
    with pytest.raises(DevServerError, match="no devserver runs on .*mxsync devserver"):
        await DevServer.attach(tmp_path)
