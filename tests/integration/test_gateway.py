"""The y-websocket gateway against a real Synapse and stock JS clients (npm yjs +
y-websocket in Node): two gateways on two Matrix accounts, a Python SyncedDoc on
a third, concurrent edits converge; a read token cannot write; awareness
between two Node clients on one gateway, gone when one leaves; bad frames and
missing tokens close that socket only; ``mxsync gateway`` serves until Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import anyio
import pycrdt
import pytest

from mxsync.dev.npm import node_available
from mxsync.gateway import TOKEN_PROTOCOL, Gateway
from tests.integration.yws import NodeYjs, wait_until

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not node_available(), reason="needs node and npm"),
]

REPO = Path(__file__).resolve().parents[2]
WRITE, READ = "alice-write-token", "alice-read-token"
B_WRITE = "bob-write-token-1"


async def test_node_clients_on_two_gateways_and_python_converge(make_user, make_client):
    alice = await make_client(await make_user("gwa", relaxed=True))
    bob = await make_client(await make_user("gwb", relaxed=True))
    carol = await make_client(await make_user("gwc", relaxed=True))
    room = await alice.create_room("gateway", invite=[bob.user_id, carol.user_id])
    await bob.join(room)
    await carol.join(room)
    async with (
        Gateway(alice, room, tokens={WRITE: "write", READ: "read"}) as gw_a,
        Gateway(bob, room, tokens={B_WRITE: "write"}) as gw_b,
        carol.open_doc(room, "notes") as py,
    ):
        assert gw_a.url and gw_b.url
        await py.wait_synced()
        py_text = py.doc.get("text", type=pycrdt.Text)
        async with (
            NodeYjs(gw_a.url, "notes", WRITE) as n1,
            NodeYjs(gw_b.url, "notes", B_WRITE) as n2,
            NodeYjs(gw_a.url, "notes", WRITE) as n3,
            NodeYjs(gw_a.url, "notes", READ) as reader,
        ):
            for n in (n1, n2, n3, reader):
                await n.wait_synced()

            # Concurrent edits from both gateways and from Python.
            for i in range(5):
                await n1.call("insert", text=f"[a{i}]")
                await n2.call("insert", text=f"[b{i}]")
                with py.doc.transaction():
                    py_text += f"[p{i}]"
            pieces = [f"[{w}{i}]" for w in "abp" for i in range(5)]

            async def converged() -> bool:
                texts = {await n.text() for n in (n1, n2, n3)} | {str(py_text)}
                return len(texts) == 1 and all(p in str(py_text) for p in pieces)

            await wait_until(converged, 60, "the three replicas to converge")
            final = str(py_text)
            assert len(final) == sum(len(p) for p in pieces)

            # The reader receives everything, and its own edit goes nowhere.
            await wait_until(lambda: _contains(reader, pieces), 30, "the reader to catch up")
            await reader.call("insert", text="[READONLY]")
            await n1.call("insert", text="[after]")
            await wait_until(lambda: "[after]" in str(py_text), 30, "[after] in Python")
            await wait_until(lambda: _text_has(n2, "[after]"), 30, "[after] on gateway b")
            assert "[READONLY]" not in str(py_text)
            assert "[READONLY]" not in await n2.text()
            assert "[READONLY]" not in await n1.text()
            assert gw_a.statistics().read_only_refused >= 1

            # Awareness between two clients of one gateway; gone when one leaves.
            n1_id = await n1.call("clientID")
            await n1.call("aware", field="user", value={"name": "n1", "color": "#e11d48"})

            async def n3_sees_n1() -> bool:
                return any(cid == n1_id and st.get("user", {}).get("name") == "n1"
                           for cid, st in await n3.call("states"))

            await wait_until(n3_sees_n1, 20, "n1's awareness state on n3")
            await n1.close()

            async def n3_lost_n1() -> bool:
                return all(cid != n1_id for cid, _ in await n3.call("states"))

            await wait_until(n3_lost_n1, 20, "n1's awareness state to go from n3")
            # Awareness never went into the document.
            assert "user" not in str(py.doc.get_update())
            assert set(py.doc.keys()) == {"text"}


async def _contains(n: NodeYjs, pieces: list[str]) -> bool:
    text = await n.text()
    return all(p in text for p in pieces)


async def _text_has(n: NodeYjs, piece: str) -> bool:
    return piece in await n.text()


async def test_bad_frames_and_bad_tokens_close_that_socket_only(make_user, make_client, caplog):
    alice = await make_client(await make_user("gwbad", relaxed=True))
    room = await alice.create_room("gateway-bad")
    async with Gateway(alice, room, tokens={WRITE: "write"}) as gw, \
            aiohttp.ClientSession() as http:
        assert gw.url
        base = gw.url + "doc"
        # No token, a wrong one: refused before the upgrade.
        for url in (base, base + "?token=wrong-token-x"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(url)
            assert err.value.status == 401
        # Garbage, a truncated sync message, an unknown type, a text frame: each closes.
        for frame, code in ((b"\xff\xff\xff", 1007), (b"\x00\x02\x05ab", 1007),
                            (b"\x07\x00", 1007), ("hello", 1003),
                            (b"\x00\x02\x03\x01\x02\x03", 1007)):
            async with http.ws_connect(f"{base}?token={WRITE}") as ws:
                first = await ws.receive_bytes(timeout=30)  # our sync step 1
                assert first[:2] == b"\x00\x00"
                if isinstance(frame, str):
                    await ws.send_str(frame)
                else:
                    await ws.send_bytes(frame)
                with anyio.fail_after(10):
                    while not ws.closed:
                        await ws.receive()
                assert ws.close_code == code, frame
        assert gw.statistics().bad_frames == 5
        assert "gateway: closing" in caplog.text
        # The gateway still serves: a stock client edits the document, its token
        # offered as a subprotocol (out of the URL), which the gateway answers with.
        async with http.ws_connect(base, protocols=[TOKEN_PROTOCOL + WRITE]) as ws:
            assert ws.protocol == TOKEN_PROTOCOL + WRITE
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(base, protocols=[TOKEN_PROTOCOL + "wrong-token-x"])
        async with NodeYjs(gw.url, "doc", "protocol:" + WRITE) as n:
            await n.wait_synced()
            await n.call("insert", text="still here")
            sdoc = await gw.document("doc")
            text = sdoc.doc.get("text", type=pycrdt.Text)
            await wait_until(lambda: str(text) == "still here", 10, "the edit in the SyncedDoc")
            await sdoc.flush()


async def test_mxsync_gateway_command_serves_until_ctrl_c(hs, make_user, make_client, tmp_path):
    creds = await make_user("gwcli", relaxed=True)
    owner = await make_client(creds)
    room = await owner.create_room("gateway-cli")
    env = {**os.environ, "MXSYNC_PASSWORD": creds.password,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = await anyio.open_process(
        [sys.executable, "-m", "mxsync", "gateway", "--homeserver", hs.url, "--user",
         creds.user_id, "--room", room, "--port", "0", "--store", str(tmp_path / "gw.db")],
        env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        out = b""
        with anyio.fail_after(60):
            while b"token (write): " not in out or not out.endswith(b"\n"):
                out += await proc.stdout.receive()
        text = out.decode()
        url = re.search(r"gateway (ws://\S+/)NAME for (\S+) as", text)
        token = re.search(r"token \(write\): (\S+)", text)
        assert url and token and url[2] == room
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(url[1] + "notes")
        async with NodeYjs(url[1], "notes", token[1]) as n:
            await n.wait_synced()
            await n.call("insert", text="via the command")
            async with owner.open_doc(room, "notes") as sdoc:
                await sdoc.wait_synced()
                got = sdoc.doc.get("text", type=pycrdt.Text)
                await wait_until(lambda: str(got) == "via the command", 30, "the edit on Matrix")
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            assert await proc.wait() == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_awareness_crosses_gateways_and_goes_when_the_client_leaves(make_user,
                                                                          make_client):
    alice = await make_client(await make_user("gwx", relaxed=True))
    bob = await make_client(await make_user("gwy", relaxed=True))
    room = await alice.create_room("gateway-awareness", invite=[bob.user_id])
    await bob.join(room)
    async with (
        Gateway(alice, room, tokens={WRITE: "write"}) as gw_a,
        Gateway(bob, room, tokens={B_WRITE: "write"}) as gw_b,
    ):
        assert gw_a.url and gw_b.url
        async with NodeYjs(gw_a.url, "notes", WRITE) as n1, \
                NodeYjs(gw_b.url, "notes", B_WRITE) as n2:
            await n1.wait_synced()
            await n2.wait_synced()
            n1_id = await n1.call("clientID")
            await n1.call("aware", field="user", value={"name": "across"})

            async def n2_sees() -> bool:
                return any(cid == n1_id and st.get("user", {}).get("name") == "across"
                           for cid, st in await n2.call("states"))

            await wait_until(n2_sees, 20, "n1's awareness state through Matrix on n2")
            await n1.close()

            async def n2_lost() -> bool:
                return all(cid != n1_id for cid, _ in await n2.call("states"))

            # Removed at once when the gateway forwards the removal; 30 s expiry otherwise.
            await wait_until(n2_lost, 45, "n1's awareness state to go from n2")


async def test_an_idle_document_is_closed_and_reopened_by_the_next_client(make_user,
                                                                         make_client):
    alice = await make_client(await make_user("gwidle", relaxed=True))
    room = await alice.create_room("gateway-idle")
    async with Gateway(alice, room, tokens={WRITE: "write"}, idle_close=0.5) as gw:
        assert gw.url
        async with NodeYjs(gw.url, "doc", WRITE) as n:
            await n.wait_synced()
            await n.call("insert", text="kept while closed")
            await wait_until(lambda: gw.statistics().docs == 1, 10, "the document open")
            # Still open while a client is connected, however long.
            await anyio.sleep(1.5)
            assert gw.statistics().docs == 1
            await n.close()
        await wait_until(lambda: gw.statistics().docs == 0, 10, "the idle document closed")
        async with NodeYjs(gw.url, "doc", WRITE) as again:
            await again.wait_synced()
            await wait_until(lambda: _text_has(again, "kept while closed"), 20,
                             "the text after reopening")
        assert gw.statistics().docs == 1
