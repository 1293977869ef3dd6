"""y-websocket clients for the tests: a stock Node one (js/yws_client.js, npm yjs +
y-websocket) driven from a test, and a minimal Python one (:class:`PyYjs`).

``async with NodeYjs(url, room, token) as n``: ``await n.call("insert", text="x")``,
``await n.text()``; :func:`wait_until` polls. Every wait has a deadline.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import anyio
import pycrdt
from anyio.abc import Process, TaskGroup
from pycrdt._sync import create_update_message

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


class PyYjs:
    """A minimal y-websocket client in Python (pycrdt's sync messages over aiohttp).

    ``async with PyYjs(http, url) as c``: ``c.doc`` syncs with the server; local
    transactions on it are sent as updates; ``await c.synced.wait()``.
    """

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        self.synced = anyio.Event()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._tg: TaskGroup | None = None
        self._sub: Any = None
        self._out: list[bytes] = []
        self._wake = anyio.Event()

    async def __aenter__(self) -> PyYjs:
        self.ws = await self.http.ws_connect(self.url)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._sub = self.doc.observe(self._on_transaction)
        await self.ws.send_bytes(pycrdt.create_sync_message(self.doc))
        self._tg.start_soon(self._read)
        self._tg.start_soon(self._write)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None and self.ws is not None
        self.doc.unobserve(self._sub)
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        await self.ws.close()

    def _on_transaction(self, event: pycrdt.TransactionEvent) -> None:
        if event.update != b"\x00\x00" and self.doc_origin_is_local:
            self._out.append(create_update_message(event.update))
            self._wake.set()

    doc_origin_is_local = True

    async def _write(self) -> None:
        assert self.ws is not None
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            out, self._out = self._out, []
            for message in out:
                await self.ws.send_bytes(message)

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY or msg.data[0] != pycrdt.YMessageType.SYNC:
                continue
            # Remote updates must not be echoed back: mark them while applying.
            self.doc_origin_is_local = False
            try:
                reply = pycrdt.handle_sync_message(msg.data[1:], self.doc)
            finally:
                self.doc_origin_is_local = True
            if reply is not None:
                await self.ws.send_bytes(reply)
            if msg.data[1] == pycrdt.YSyncMessageType.SYNC_STEP2:
                self.synced.set()
