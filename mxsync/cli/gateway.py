"""``mxsync gateway``: serve a room's documents to Yjs apps over y-websocket.

::

    mxsync gateway --room ROOM [--host 127.0.0.1] [--port 1234]
                   [--token T ...] [--read-token T ...] [--anonymous read|write]

Logs in (the usual ``--homeserver``/``--user`` options), joins ROOM and serves
``ws://HOST:PORT/NAME`` for every document NAME of the room. Tokens also come
from ``MXSYNC_GATEWAY_TOKENS`` (``token`` or ``token:read``, comma-separated).
With no token and no ``--anonymous``, one write token is made up and printed.
Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import os
import secrets
from typing import TYPE_CHECKING

import anyio

from ..errors import ConfigError
from .common import add_login_args, client_from_args, run_command

if TYPE_CHECKING:
    from ..gateway import Access

__all__ = ["add_parser", "cmd_gateway", "parse_tokens"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gateway", help="serve a room's documents over y-websocket",
                       description="Serve a room's documents to Yjs apps (y-websocket).")
    p.add_argument("--room", required=True, help="room id (!...) or alias (#...)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument("--port", type=int, default=1234, help="listen port (default: %(default)s; "
                   "0: a free one)")
    p.add_argument("--token", action="append", default=[], metavar="T",
                   help="a token that may edit (repeatable)")
    p.add_argument("--read-token", action="append", default=[], metavar="T",
                   help="a token that may only read (repeatable)")
    p.add_argument("--anonymous", choices=["read", "write"], default=None,
                   help="what a connection without a known token may do (default: refused)")
    p.add_argument("--read-only", action="store_true",
                   help="open the documents read-only (an account without write power)")
    add_login_args(p)
    p.set_defaults(func=cmd_gateway)


def parse_tokens(text: str) -> dict[str, Access]:
    """``"a-token,b-token:read"`` -> ``{"a-token": "write", "b-token": "read"}``."""
    out: dict[str, Access] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        token, _, access = item.partition(":")
        if access not in ("", "write", "read"):
            raise ConfigError(f"token access must be write or read, not {access!r}")
        out[token] = "read" if access == "read" else "write"
    return out


def cmd_gateway(args: argparse.Namespace) -> int:
    tokens = parse_tokens(os.environ.get("MXSYNC_GATEWAY_TOKENS", ""))
    tokens.update({t: "write" for t in args.token})
    tokens.update({t: "read" for t in args.read_token})
    made_up = None
    if not tokens and args.anonymous is None:
        made_up = secrets.token_urlsafe(18)
        tokens[made_up] = "write"

    async def main() -> None:
        # Imported here: aiohttp's server is not worth loading for every other command.
        from ..gateway import Gateway

        async with client_from_args(args) as client:
            room_id = await client.join(args.room)
            async with Gateway(client, room_id, host=args.host, port=args.port, tokens=tokens,
                               anonymous=args.anonymous, read_only=args.read_only) as gw:
                print(f"gateway {gw.url}NAME for {room_id} as {client.user_id}", flush=True)
                if made_up is not None:
                    print(f"token (write): {made_up}   e.g. new WebsocketProvider("
                          f"'{gw.url.rstrip('/') if gw.url else ''}', 'notes', ydoc, "
                          f"{{params: {{token: '{made_up}'}}}})", flush=True)
                await anyio.sleep_forever()

    return run_command("mxsync gateway", main)
