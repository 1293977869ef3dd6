"""A newcomer's first hour, against a real Synapse: users and rooms from the
``mxsync`` command on a running devserver, one-shot commands that finish at once,
a document a member may not declare, and the README's snippets run as written.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pycrdt
import pytest

from mxsync import Client
from mxsync.dev import DevServer
from mxsync.errors import ForbiddenError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
MXSYNC = [sys.executable, "-m", "mxsync"]


def mxsync(*args: str, env: dict[str, str], cwd: Path, timeout: float = 90) -> tuple[str, float]:
    """Run ``mxsync ARGS``; its stdout and how long it took. Fails on a non-zero exit."""
    started = time.monotonic()
    done = subprocess.run([*MXSYNC, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    took = time.monotonic() - started
    assert done.returncode == 0, f"mxsync {' '.join(args)}: {done.stderr}"
    return done.stdout, took


def login_env(lines: str) -> dict[str, str]:
    """The environment of ``user add``'s output (MXSYNC_* lines) over ours."""
    env = {**os.environ}
    for line in lines.splitlines():
        key, _, value = line.partition("=")
        assert key.startswith("MXSYNC_"), line
        env[key] = value
    return env


async def test_newcomer_cli_journey_on_a_running_devserver(hs: DevServer, tmp_path: Path):
    base = {**os.environ, "COLUMNS": "100"}
    state = ["--state-dir", str(hs.state_dir)]
    suffix = os.urandom(3).hex()
    alice = login_env(mxsync("devserver", "user", "add", f"alice{suffix}", *state,
                             env=base, cwd=tmp_path)[0])
    bob = login_env(mxsync("devserver", "user", "add", f"bob{suffix}", *state,
                           env=base, cwd=tmp_path)[0])
    assert alice["MXSYNC_HOMESERVER"] == hs.url
    room = mxsync("room", "create", "plant", "--invite", f"bob{suffix}",
                  env=alice, cwd=tmp_path)[0].strip()
    assert room.startswith("!")
    assert mxsync("room", "join", room, env=bob, cwd=tmp_path)[0].strip() == room
    mxsync("sensor", "publish", room, "temp", "21.5", "--unit", "Cel", env=alice, cwd=tmp_path)

    # tail: the last value once, then a new one as it comes; Ctrl-C ends it at once.
    tail = subprocess.Popen([*MXSYNC, "sensor", "tail", room], env=bob, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tail.stdout is not None
        assert "temp 21.5 Cel [cli] (last)" in tail.stdout.readline()
        mxsync("sensor", "publish", room, "temp", "22.5", env=alice, cwd=tmp_path)
        assert "temp 22.5" in tail.stdout.readline()
        tail.send_signal(signal.SIGINT)
        rest, _ = tail.communicate(timeout=30)
        assert "21.5" not in rest and tail.returncode == 130
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()

    # history: a returning client is live at once, every time.
    for _ in range(3):
        out, took = mxsync("sensor", "history", room, "temp", env=bob, cwd=tmp_path)
        assert [line.split("\t")[1] for line in out.splitlines()] == ["21.5", "22.5"]
        # Not a speed check (bench/ measures speed): the bug this guards made the
        # first sync of a run long-poll for 30 s. Far below that, whatever the load.
        assert took < 15.0, f"history took {took:.1f} s: did the first sync long-poll?"

    async with Client(hs.url, alice["MXSYNC_USER"], password=alice["MXSYNC_PASSWORD"],
                      store_path=tmp_path / "alice-py.db") as client:
        async with client.open_doc(room, "notes") as sdoc:
            await sdoc.wait_synced()
            sdoc.doc.get("body", type=pycrdt.Text).insert(0, "hello")
            await sdoc.flush()
    cat, _ = mxsync("doc", "cat", room, env=bob, cwd=tmp_path)  # the only document
    assert '"body": "hello"' in cat
    stats, _ = mxsync("doc", "stats", room, env=bob, cwd=tmp_path)
    assert "notes" in stats and "update events" in stats
    assert max(len(line) for line in stats.splitlines()) <= 100, stats


async def test_cli_refusals_are_said_once(hs: DevServer, make_user, tmp_path: Path):
    alice, ops = await make_user("alice"), await make_user("ops")
    async with Client(hs.url, alice.user_id, password=alice.password,
                      store_path=tmp_path / "alice.db") as client:
        room = await client.create_room("ro", invite=[ops.user_id], writers=[])
    env = {**os.environ, "MXSYNC_HOMESERVER": hs.url, "MXSYNC_USER": ops.user_id,
           "MXSYNC_PASSWORD": ops.password}
    mxsync("room", "join", room, env=env, cwd=tmp_path)
    done = subprocess.run([*MXSYNC, "sensor", "publish", room, "temp", "1"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert done.returncode == 1
    assert done.stderr.count("M_FORBIDDEN") == 1, done.stderr
    done = subprocess.run([*MXSYNC, "doc", "cat", room], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"mxsync doc cat: no document is declared in {room}"]
    wrong = {**env, "MXSYNC_PASSWORD": "wrong"}  # with a valid session in the store
    done = subprocess.run([*MXSYNC, "doc", "stats", room], env=wrong, cwd=tmp_path,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 1 and "Invalid username or password" in done.stderr


async def test_member_who_may_not_declare_gets_a_clear_error_in_bounded_time(
    make_user, make_client
):
    alice, bob = await make_user("alice"), await make_user("bob")
    a, b = await make_client(alice), await make_client(bob)
    room = await a.create_room("undeclared", invite=[bob.user_id], writers=[])
    await b.join(room)
    started = time.monotonic()
    with anyio.fail_after(60):
        async with b.open_doc(room, "board", declare_timeout=1.0) as sdoc:
            with pytest.raises(ForbiddenError) as caught:
                await sdoc.wait_synced()
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "'board' is not declared" in message
    assert "needs power level 50" in message and f"{bob.user_id} has 0" in message


def _readme_snippets() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


async def test_readme_snippets_run_as_written(hs: DevServer, tmp_path: Path):
    snippets = _readme_snippets()
    assert len(snippets) >= 3
    # They talk to "the devserver running in .mxsync/devserver": this one.
    (tmp_path / ".mxsync").mkdir()
    (tmp_path / ".mxsync" / "devserver").symlink_to(hs.state_dir)
    for i, code in enumerate(snippets):
        with anyio.fail_after(120):
            done = await anyio.run_process([sys.executable, "-c", code], cwd=tmp_path,
                                           check=False)
        assert done.returncode == 0, f"README snippet {i}:\n{code}\n{done.stderr.decode()}"


async def test_whiteboard_of_a_member_who_may_not_declare_stops_on_the_first_sigterm(
    hs: DevServer, make_user, make_client, tmp_path: Path
):
    alice, bob = await make_user("alice"), await make_user("bob")
    a = await make_client(alice)
    room = await a.create_room("wb", invite=[bob.user_id], writers=[])
    env = {**os.environ, "MXSYNC_PASSWORD": bob.password,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.whiteboard", "--homeserver", hs.url, "--user",
         bob.user_id, "--room", room, "--port", "0", "--store", str(tmp_path / "bob.db")],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        # It says what it waits for (at WARNING: the example's default level).
        line = await anyio.to_thread.run_sync(proc.stderr.readline)
        assert "waiting up to 30 s for 'whiteboard' to be declared" in line, line
        assert "needs power level 50" in line
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        await anyio.to_thread.run_sync(proc.wait, 60)
        assert time.monotonic() - stopped < 5
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
