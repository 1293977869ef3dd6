"""Pointing a running client at another address: how tests make a homeserver
unreachable for one client (``DEAD``) and reachable again."""

from __future__ import annotations

from typing import Any

import aiohttp

#: A loopback port nothing listens on: connections are refused at once.
DEAD = "http://127.0.0.1:9"


async def repoint(client: Any, url: str) -> None:
    """Send ``client``'s next requests to ``url`` on a fresh HTTP session.

    The new session and address are in place before the old session closes: a
    request started while it closes would meet aiohttp's "Session is closed"
    (a RuntimeError no real outage raises). Requests in flight on the old
    session fail as a lost connection does.
    """
    old = client.nio.client_session
    client.nio.homeserver = url
    client.nio.client_session = aiohttp.ClientSession()
    if old is not None:
        await old.close()
