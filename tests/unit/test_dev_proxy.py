"""mxsync.dev.proxy.TcpProxy against a loopback echo server (no Synapse)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from mxsync.dev.proxy import TcpProxy

pytestmark = pytest.mark.anyio

QUIET = 0.3  # how long "nothing arrives" is watched


async def _echo(stream: SocketStream) -> None:
    async with stream:
        try:
            async for data in stream:
                await stream.send(data)
        except (anyio.BrokenResourceError, OSError):
            pass


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, _echo)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()


async def _roundtrip(stream: SocketStream, data: bytes, seconds: float = 5.0) -> bytes:
    await stream.send(data)
    got = b""
    with anyio.fail_after(seconds):
        while len(got) < len(data):
            got += await stream.receive()
    return got


async def _nothing_within(stream: SocketStream, seconds: float = QUIET) -> bool:
    with anyio.move_on_after(seconds):
        await stream.receive()
        return False
    return True


async def test_relays_both_ways_on_a_port_of_its_own(echo_port: int) -> None:
    async with TcpProxy(target=("127.0.0.1", echo_port)) as proxy:
        assert proxy.port not in (0, echo_port) and proxy.mode is None
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as conn:
            assert await _roundtrip(conn, b"hello") == b"hello"
            assert await _roundtrip(conn, b"x" * 200_000) == b"x" * 200_000
        assert proxy.accepted == 1


async def test_drop_holds_bytes_and_new_connections_until_heal(echo_port: int) -> None:
    async with TcpProxy(target=("127.0.0.1", echo_port)) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as old:
            assert await _roundtrip(old, b"before") == b"before"
            proxy.cut("drop")
            assert proxy.mode == "drop"
            await old.send(b"held")
            new = await anyio.connect_tcp("127.0.0.1", proxy.port)  # accepted, not relayed
            await new.send(b"new")
            assert await _nothing_within(old) and await _nothing_within(new)
            proxy.heal()
            with anyio.fail_after(5):
                assert await old.receive() == b"held"
                assert await new.receive() == b"new"
            await new.aclose()


async def test_reject_resets_open_and_new_connections(echo_port: int) -> None:
    async with TcpProxy(target=("127.0.0.1", echo_port)) as proxy:
        conn = await anyio.connect_tcp("127.0.0.1", proxy.port)
        assert await _roundtrip(conn, b"ping") == b"ping"
        proxy.cut("reject")
        with anyio.fail_after(5), pytest.raises((anyio.BrokenResourceError, OSError)):
            await conn.receive()
        await conn.aclose()
        with anyio.fail_after(5):
            refused = await anyio.connect_tcp("127.0.0.1", proxy.port)
            with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream, OSError)):
                await refused.receive()
            await refused.aclose()
        proxy.heal()
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as again:
            assert await _roundtrip(again, b"back") == b"back"


async def test_connections_wait_for_a_target(echo_port: int) -> None:
    async with TcpProxy() as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as conn:
            await conn.send(b"early")
            assert await _nothing_within(conn)
            proxy.set_target("127.0.0.1", echo_port)
            with anyio.fail_after(5):
                assert await conn.receive() == b"early"


async def test_unreachable_target_resets_the_client() -> None:
    async with TcpProxy(target=("127.0.0.1", 1)) as proxy:
        async with await anyio.connect_tcp("127.0.0.1", proxy.port) as conn:
            with anyio.fail_after(5), pytest.raises(
                (anyio.BrokenResourceError, anyio.EndOfStream, OSError)
            ):
                await conn.receive()


async def test_leaving_closes_every_connection_and_the_port(echo_port: int) -> None:
    async with TcpProxy(target=("127.0.0.1", echo_port)) as proxy:
        port = proxy.port
        conn = await anyio.connect_tcp("127.0.0.1", port)
        assert await _roundtrip(conn, b"x") == b"x"
        assert proxy.connections == 1
    with anyio.fail_after(5), pytest.raises(
        (anyio.BrokenResourceError, anyio.EndOfStream, OSError)
    ):
        await conn.receive()
    await conn.aclose()
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", port)


async def test_cut_rejects_an_unknown_mode() -> None:
    proxy = TcpProxy()
    with pytest.raises(ValueError, match="drop"):
        proxy.cut("sever")  # type: ignore[arg-type]
