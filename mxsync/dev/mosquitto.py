"""A Mosquitto broker for tests, the demo and benchmarks: one child on a free loopback port.

Owns the broker child, its config file and log in a directory it is given.
``async with Mosquitto(state_dir) as broker`` starts ``/usr/sbin/mosquitto``
(Debian's package; scripts/ensure-system-packages installs it) listening on
127.0.0.1 only, anonymous, without persistence, and stops it (SIGTERM, then
SIGKILL) when the block ends; ``broker.port`` is the port.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import IO

from ..errors import DevServerError
from .process import LIVE_CHILDREN, STOP_GRACE_SECONDS, free_port, signal_group, spawn, wait_until

__all__ = ["MOSQUITTO", "Mosquitto"]

MOSQUITTO = "/usr/sbin/mosquitto"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Mosquitto:
    """One Mosquitto child; an async context manager."""

    def __init__(self, state_dir: Path, *, port: int | None = None,
                 binary: str = MOSQUITTO) -> None:
        self._dir = Path(state_dir)
        self.port = port or free_port()
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    async def __aenter__(self) -> Mosquitto:
        if shutil.which(self._binary) is None:
            raise DevServerError(f"{self._binary} is missing (Debian package mosquitto)")
        self._dir.mkdir(parents=True, exist_ok=True)
        conf = self._dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\n"
        )
        self._log = open(self._dir / "mosquitto.log", "ab")  # noqa: SIM115, ASYNC230 - small, local
        self._proc = spawn([self._binary, "-c", str(conf)], self._log)
        LIVE_CHILDREN.add(self._proc)
        proc = self._proc
        if not await wait_until(lambda: _listening(self.port) or proc.poll() is not None, 10):
            await self.__aexit__(None, None, None)
            raise DevServerError(f"mosquitto did not listen on {self.port} within 10 s")
        if proc.poll() is not None:
            await self.__aexit__(None, None, None)
            raise DevServerError(f"mosquitto exited ({proc.returncode}); see {self._dir}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            signal_group(proc, signal.SIGTERM)
            if not await wait_until(lambda: proc.poll() is not None, STOP_GRACE_SECONDS):
                signal_group(proc, signal.SIGKILL)
                await wait_until(lambda: proc.poll() is not None, STOP_GRACE_SECONDS)
            LIVE_CHILDREN.discard(proc)
        if self._log is not None:
            self._log.close()
            self._log = None
