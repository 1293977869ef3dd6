"""``python -m examples.whiteboard``: one user's whiteboard page, kept in a room.

::

    python -m examples.whiteboard --homeserver http://127.0.0.1:8008 \\
        --user @alice:localhost --password ... --room '!abc:localhost' --port 8081

prints ``whiteboard (@alice:localhost)  http://127.0.0.1:8081/`` once the board
has caught up with the room; open that URL. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

from .._web import add_app_args, run_app
from .server import DOC_NAME, run_whiteboard


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.whiteboard",
        description="A collaborative whiteboard in the browser, kept in a Matrix room.",
    )
    add_app_args(parser)
    parser.add_argument("--doc", default=DOC_NAME, help="document name (default: %(default)s)")
    args = parser.parse_args(argv)

    async def run(stop: anyio.Event) -> None:
        from mxsync.cli.common import client_from_args

        async with client_from_args(args) as client:

            def ready(url: str) -> None:
                print(f"whiteboard ({client.user_id})  {url}", flush=True)

            await run_whiteboard(client, args.room, host=args.host, port=args.port,
                                 doc_name=args.doc, on_ready=ready, stop=stop)

    return run_app(run, verbose=args.verbose, prog="whiteboard")


if __name__ == "__main__":
    sys.exit(main())
