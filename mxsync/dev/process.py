"""Child processes of the dev tools: spawning, signalling, reaping, waiting, ports.

Owns nothing but the process table's view of our children: every child is
spawned in its own session (Ctrl-C in a terminal reaches us, not it) and, on
Linux, gets SIGTERM when the thread that started it dies (``PR_SET_PDEATHSIG``),
so even ``kill -9`` of the parent leaves no orphan. :data:`LIVE_CHILDREN` is
the last-resort registry that an ``atexit`` hook stops.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import pwd
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import anyio

__all__ = [
    "LIVE_CHILDREN",
    "STOP_GRACE_SECONDS",
    "free_port",
    "is_synapse",
    "pid_alive",
    "port_free",
    "run_to_end",
    "signal_group",
    "spawn",
    "wait_until",
]

STOP_GRACE_SECONDS = 5.0

_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved in the parent so the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return fn


def _die_with_parent(prctl: Callable[..., int], parent_pid: int) -> None:
    """preexec_fn: SIGTERM us when the parent goes away, even by SIGKILL."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The parent may have died between fork and prctl: then no signal will come.
    if os.getppid() != parent_pid:
        os._exit(1)


def spawn(
    argv: Sequence[str],
    out: BinaryIO,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, stdout and stderr to ``out``, no stdin.

    On Linux the child gets SIGTERM when the calling thread dies. ``user``
    (root only): run as that user, in its primary group, with no other groups;
    the death signal still holds, since Python's child sets it after the switch.
    """
    ids: dict[str, Any] = {}
    if user is not None:
        ids = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
    prctl = _prctl()
    # PR_SET_PDEATHSIG fires when the *thread* that forked dies, so this must
    # run on the event loop's thread, never in a worker thread.
    preexec = functools.partial(_die_with_parent, prctl, os.getpid()) if prctl else None
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
        preexec_fn=preexec,
        **ids,
    )


async def run_to_end(
    argv: Sequence[str],
    out: BinaryIO,
    seconds: float,
    *,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Run a short-lived command like :func:`spawn`; its exit code, killed after ``seconds``.

    Raises TimeoutError when it had to be killed.
    """
    proc = spawn(argv, out, cwd=cwd, user=user)
    LIVE_CHILDREN.add(proc)
    try:
        if not await wait_until(lambda: proc.poll() is not None, seconds):
            raise TimeoutError(f"{argv[0]} did not finish within {seconds:g} s")
        return proc.returncode
    finally:
        if proc.poll() is None:
            signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE_SECONDS)
        LIVE_CHILDREN.discard(proc)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"


def is_synapse(pid: int) -> bool:
    """Best effort against pid reuse: is ``pid`` a Synapse homeserver?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists() and pid_alive(pid)
    except OSError:
        return True
    return b"synapse.app.homeserver" in cmdline


def signal_group(
    proc: subprocess.Popen[bytes], sig: signal.Signals, *, even_if_exited: bool = False
) -> None:
    """Send ``sig`` to the process group of ``proc`` (a child made by :func:`spawn`).

    Skipped once ``proc`` has exited, unless ``even_if_exited``: that also reaps
    anything the child left in its group.
    """
    if proc.poll() is not None and not even_if_exited:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # The child is its own session and process-group leader.
        os.killpg(proc.pid, sig)


# Last resort for owners that exit without running __aexit__ (sys.exit from a
# callback, a loop torn down without cancelling its tasks).
LIVE_CHILDREN: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _reap_live_children() -> None:
    for proc in list(LIVE_CHILDREN):
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE_SECONDS)
        LIVE_CHILDREN.discard(proc)


async def wait_until(done: Callable[[], bool], seconds: float, interval: float = 0.05) -> bool:
    """Poll ``done`` until it is true or ``seconds`` pass; return its last value."""
    with anyio.move_on_after(seconds):
        while True:
            if done():
                return True
            await anyio.sleep(interval)
    return done()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_free(port: int) -> bool:
    """Can ``port`` on 127.0.0.1 be bound (again) now?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
