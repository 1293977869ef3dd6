"""Matrix-CRDT rooms (``open_doc(room, compat="matrix-crdt")``) against a real
Synapse and a real Matrix-CRDT 0.2.0 client in Node (npm: matrix-crdt's CommonJS
build, matrix-js-sdk 19.7.0, yjs 13.6; the pinned set of ``mxsync.dev.npm``).

Every wait has a deadline. Skipped, with the reason, when Node is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pycrdt
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from mxsync import Client
from mxsync.dev.npm import ensure_package_set, node_available, node_command
from mxsync.dev.server import Credentials

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

PEER = Path(__file__).parent / "js" / "matrix_crdt_peer.js"


async def until(cond: Callable[[], bool], *, deadline: float = 30.0) -> None:
    with anyio.fail_after(deadline):
        while not cond():  # noqa: ASYNC110 - a document, polled
            await anyio.sleep(0.02)


class Peer:
    """One Matrix-CRDT client in Node, driven over stdin/stdout."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        self.proc = proc
        assert proc.stdout is not None and proc.stdin is not None
        self._out = BufferedByteReceiveStream(proc.stdout)

    async def _line(self) -> dict[str, Any]:
        with anyio.fail_after(60):
            line = await self._out.receive_until(b"\n", 1 << 24)
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        await self.proc.stdin.send((json.dumps(cmd) + "\n").encode())
        return await self._line()

    async def state(self) -> dict[str, Any]:
        return await self.call(cmd="state")


async def start_peer(hs_url: str, room: str, creds: Credentials, modules: Path) -> Peer:
    cfg = {"homeserver": hs_url, "room": room, "user_id": creds.user_id,
           "access_token": creds.access_token, "device_id": creds.device_id}
    proc = await anyio.open_process([*node_command(), str(PEER), json.dumps(cfg)],
                                    env={**os.environ, "NODE_PATH": str(modules)})
    peer = Peer(proc)
    ready = await peer._line()
    assert ready["ready"] is True
    return peer


@pytest.fixture
def modules() -> Path:
    if not node_available():
        pytest.skip("Node.js and npm are needed for the Matrix-CRDT peer")
    return ensure_package_set("matrix-crdt")


async def test_matrix_crdt_and_mxsync_edit_one_room_and_converge_across_snapshots(
    hs, make_user, make_client, modules
):
    a_creds = await make_user("cmpa", relaxed=True)
    j_creds = await make_user("cmpj", relaxed=True)
    b_creds = await make_user("cmpb", relaxed=True)
    a: Client = await make_client(a_creds)
    room = await a.create_room("compat", invite=[j_creds.user_id, b_creds.user_id])
    j_client = await make_client(j_creds)
    await j_client.join(room)

    async with a.open_doc(room, compat="matrix-crdt") as mdoc:
        with anyio.fail_after(60):
            await mdoc.wait_synced()
        text = mdoc.doc.get("t", type=pycrdt.Text)
        peer = await start_peer(hs.url, room, j_creds, modules)
        try:
            # Both type at once: mxsync at the start, Matrix-CRDT at the end.
            for _ in range(8):
                text.insert(0, "m")
                await peer.call(cmd="insert", pos=10**6, text="j")
                await anyio.sleep(0.3)
            await until(lambda: len(str(text)) == 16, deadline=60)
            js = await peer.state()
            with anyio.fail_after(60):
                while js["text"] != str(text):
                    await anyio.sleep(0.1)  # noqa: ASYNC110 - another process's document
                    js = await peer.state()
            assert sorted(str(text)) == sorted("m" * 8 + "j" * 8)

            # Matrix-CRDT alone until it posts a snapshot (its 30th update since the
            # last snapshot is its own); mxsync follows and applies it.
            for _ in range(60):
                js = await peer.state()
                if js["snapshots"]:
                    break
                await peer.call(cmd="insert", pos=10**6, text="s")
                await anyio.sleep(0.6)  # past its 500 ms throttle: one event each
            assert js["snapshots"] >= 1, js
            await until(lambda: mdoc.statistics().updates_since_snapshot == 0
                        and str(text) == js["text"], deadline=60)

            # Concurrent edits after the snapshot still converge.
            for _ in range(4):
                text.insert(len(str(text)) // 2, "M")
                await peer.call(cmd="insert", pos=0, text="J")
                await anyio.sleep(0.2)
            await mdoc.flush()
            with anyio.fail_after(60):
                while (  # noqa: ASYNC110 - another process's document, polled
                    (js := await peer.state())["text"] != str(text) or "M" not in js["text"]
                ):
                    await anyio.sleep(0.1)
            assert str(text).count("M") == 4 and str(text).count("J") == 4
            final = str(text)
        finally:
            assert peer.proc.stdin is not None
            await peer.proc.stdin.aclose()
            with anyio.fail_after(10):
                await peer.proc.wait()

    # A fresh mxsync client opens the room cold: from Matrix-CRDT's snapshot on.
    b: Client = await make_client(b_creds)
    await b.join(room)
    async with b.open_doc(room, compat="matrix-crdt") as fresh:
        with anyio.fail_after(60):
            await fresh.wait_synced()
        assert str(fresh.doc.get("t", type=pycrdt.Text)) == final
        st = fresh.statistics()
    assert st.snapshots_applied >= 1, st
    # It stopped at the snapshot's last_event_id instead of reading everything.
    assert st.load_events < 16 + 30, st

