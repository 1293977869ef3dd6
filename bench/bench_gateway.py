"""Keystroke-to-other-client latency through two y-websocket gateways on Matrix,
against a direct y-websocket server (pycrdt-websocket alone, no Matrix), same run.

    python -m bench --only gateway [--quick]

Two stock Yjs clients (npm yjs + y-websocket, one Node process, one clock) type
into one Y.Text: A types N characters at a steady pace, B times each from A's
insert to its arrival. Baseline: both connect to one pycrdt-websocket
``WebsocketServer`` (served here through aiohttp). Gateway: A connects to a
gateway on alice's Matrix client, B to one on bob's (two accounts, one room on
the devserver), so each keystroke goes provider -> gateway -> SyncedDoc ->
Synapse -> /sync -> the other SyncedDoc -> gateway -> provider. Reference: the
same typing between two Python SyncedDocs (no gateway), same users. Relaxed users
(no message rate limit): what the path costs; under the default limit a
timeline-only path is paced by ``rc_message`` (the live to-device channel is
issue 16's other part).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from aiohttp import WSMsgType, web

from mxsync.dev import DevServer
from mxsync.dev.npm import ensure_package_set, node_command
from mxsync.gateway import Gateway

from .bench_docs import _room, _users, typing_latency

SCRIPT = Path(__file__).with_name("js") / "keystrokes.js"
TOKEN = "bench-gateway-token"


def say(msg: str) -> None:
    print(f"[gateway] {msg}", file=sys.stderr, flush=True)


class _AiohttpChannel:
    """pycrdt's ``Channel`` over an aiohttp WebSocket, for pycrdt-websocket."""

    def __init__(self, ws: web.WebSocketResponse, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> _AiohttpChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except Exception:
            raise StopAsyncIteration() from None

    async def send(self, message: bytes) -> None:
        try:
            await self._ws.send_bytes(message)
        except ConnectionError:
            pass  # the client left; pycrdt-websocket still broadcasts to it once

    async def recv(self) -> bytes:
        msg = await self._ws.receive()
        if msg.type != WSMsgType.BINARY:
            raise ConnectionError("closed")
        return bytes(msg.data)


async def _direct_server(stack: AsyncExitStack) -> str:
    from pycrdt.websocket import WebsocketServer

    server = WebsocketServer(auto_clean_rooms=False)
    await stack.enter_async_context(server)
    for rep in range(2):
        # Started before the clients: two connecting at once to a new room race in
        # pycrdt-websocket 0.16.5 ("YRoom already running").
        await server.get_room(f"/direct{rep}")

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        await server.serve(_AiohttpChannel(ws, request.path))
        return ws

    app = web.Application()
    app.router.add_get("/{name:.+}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"ws://127.0.0.1:{port}"


async def _keystrokes(url_a: str, url_b: str, room: str, n: int, interval_ms: int,
                      token: str | None = None) -> list[float]:
    modules = ensure_package_set("y-websocket")
    args = [str(SCRIPT), url_a, url_b, room, str(n), str(interval_ms)]
    if token:
        args += [token, token]
    with anyio.fail_after(n * interval_ms / 1000 + 120):
        done = await anyio.run_process([*node_command(), *args], check=False,
                                       env={**os.environ, "NODE_PATH": str(modules)})
    if done.returncode != 0:
        raise RuntimeError(f"keystrokes.js failed: {done.stderr.decode()[-2000:]}")
    lat = json.loads(done.stdout.decode().splitlines()[-1])["latencies_ms"]
    lost = sum(1 for v in lat if v is None)
    if lost:
        raise RuntimeError(f"{lost} of {n} keystrokes never arrived")
    return [float(v) for v in lat]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _figures(prefix: str, lat: list[float]) -> dict[str, float]:
    return {f"{prefix}_p50_ms": round(statistics.median(lat), 1),
            f"{prefix}_p99_ms": round(_pct(lat, 0.99), 1)}


async def run(hs: DevServer, *, quick: bool) -> dict[str, float]:
    n, interval = (100, 50) if quick else (400, 50)
    out: dict[str, Any] = {"gateway_keystrokes": n, "gateway_interval_ms": interval}
    async with AsyncExitStack() as stack:
        direct = await _direct_server(stack)
        alice, bob = await _users(hs, stack, 2, "gw")
        room = await _room(alice, [bob])
        gw_a = await stack.enter_async_context(
            Gateway(alice, room, tokens={TOKEN: "write"}))
        gw_b = await stack.enter_async_context(
            Gateway(bob, room, tokens={TOKEN: "write"}))
        assert gw_a.url and gw_b.url
        # Alternate, twice each: the first pass meets a cold server.
        for rep in range(2):
            lat = await _keystrokes(direct, direct, f"direct{rep}", n, interval)
            say(f"direct y-websocket: p50 {statistics.median(lat):.1f} ms, "
                f"p99 {_pct(lat, 0.99):.1f} ms")
            if rep == 1:
                out.update(_figures("ywebsocket_direct_latency", lat))
            lat = await _keystrokes(gw_a.url.rstrip("/"), gw_b.url.rstrip("/"), f"typing{rep}",
                                    n, interval, TOKEN)
            say(f"two gateways over Matrix: p50 {statistics.median(lat):.1f} ms, "
                f"p99 {_pct(lat, 0.99):.1f} ms")
            if rep == 1:
                out.update(_figures("gateway_latency", lat))
        # The same typing between two SyncedDocs (Python, no gateway, no WebSocket):
        # what Matrix alone costs on this server now.
        samples = await typing_latency(alice, bob, n * interval / 1000 + 2.0,
                                       rate=1000 / interval)
        say(f"SyncedDoc to SyncedDoc: p50 {statistics.median(samples):.1f} ms, "
            f"p99 {_pct(samples, 0.99):.1f} ms")
        out.update(_figures("syncdoc_typing_latency", samples))
    out["gateway_latency_p50_ratio"] = round(
        out["gateway_latency_p50_ms"] / max(out["ywebsocket_direct_latency_p50_ms"], 0.001), 1)
    return out
