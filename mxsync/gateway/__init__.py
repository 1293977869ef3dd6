"""The y-websocket gateway: any Yjs app reaches a room's documents with a stock provider.

``async with Gateway(client, room_id, port=8765, tokens={"s3cret-token": "write"})``
serves the y-websocket protocol; ``new WebsocketProvider("ws://127.0.0.1:8765",
NAME, ydoc, {params: {token}})`` in a browser or Node edits the room's
SyncedDoc ``NAME``. Modules: :mod:`.relay` (the protocol between one document
and its peers, no socket), :mod:`.server` (aiohttp, tokens, documents held open).
It sits above :mod:`mxsync.client`, beside ``dev/`` and ``cli/``.
"""

from .relay import DocRelay, Peer
from .server import TOKEN_PROTOCOL, Access, Gateway, GatewayStatistics

__all__ = ["TOKEN_PROTOCOL", "Access", "DocRelay", "Gateway", "GatewayStatistics", "Peer"]
