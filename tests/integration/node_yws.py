"""A stock Node y-websocket client (js/yws_client.js) driven from a test.

``async with NodeYjs(url, room, token) as n``: ``await n.call("insert", text="x")``,
``await n.text()``, ``await n.wait(lambda: ...)``. Every wait has a deadline.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import Process, TaskGroup

from mxsync.dev.npm import ensure_package_set, node_command

SCRIPT = Path(__file__).with_name("js") / "yws_client.js"


class NodeYjs:
    def __init__(self, url: str, room: str, token: str | None = None) -> None:
        self.args = [str(SCRIPT), url, room] + ([token] if token else [])
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._proc: Process | None = None
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> NodeYjs:
        modules = ensure_package_set("y-websocket")
        self._proc = await anyio.open_process(
            [*node_command(), *self.args],
            env={**os.environ, "NODE_PATH": str(modules)},
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._proc is not None and self._tg is not None
        if self._proc.returncode is None:
            self._proc.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self._proc.wait()
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        await self._proc.aclose()

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        buf = b""
        async for chunk in self._proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if "id" in msg and msg["id"] in self._waiting:
                    event, box = self._waiting.pop(msg["id"])
                    box.append(msg["result"])
                    event.set()
                else:
                    self.events.append(msg)

    async def call(self, op: str, seconds: float = 10, **kw: Any) -> Any:
        assert self._proc is not None and self._proc.stdin is not None
        cid = next(self._ids)
        event, box = anyio.Event(), []
        self._waiting[cid] = (event, box)
        await self._proc.stdin.send((json.dumps({"id": cid, "op": op, **kw}) + "\n").encode())
        with anyio.fail_after(seconds):
            await event.wait()
        return box[0]

    async def text(self) -> str:
        result: str = await self.call("text")
        return result

    async def wait_synced(self, seconds: float = 60) -> None:
        await wait_until(lambda: any(e.get("event") == "sync" and e["synced"]
                                     for e in self.events), seconds, "y-websocket sync")

    async def close(self) -> None:
        await self.call("close")
        assert self._proc is not None
        with anyio.fail_after(10):
            await self._proc.wait()


async def wait_until(check: Callable[[], bool | Awaitable[bool]], seconds: float,
                     what: str, every: float = 0.05) -> None:
    """Poll ``check`` until it is true; fail after ``seconds`` saying ``what``."""
    try:
        with anyio.fail_after(seconds):
            while True:
                ok = check()
                if not isinstance(ok, bool):
                    ok = await ok
                if ok:
                    return
                await anyio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds} s waiting for {what}") from None
