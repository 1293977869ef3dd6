"""``mxsync devserver user add NAME``: a user on a running devserver.

Registration is closed on the devserver (as on a real homeserver); this
registers through Synapse's shared-secret admin API, with the secret the state
directory holds, on the server that ``mxsync devserver`` (or ``mxsync demo``)
is running there. It prints the login as environment lines that every
``mxsync`` command reads::

    $ export $(mxsync devserver user add alice)
    $ mxsync room create notes --invite @bob:localhost
"""

from __future__ import annotations

import argparse

from ..dev import DEFAULT_STATE_DIR, DevServer
from .common import run_command

__all__ = ["add_user_parser", "cmd_user_add"]


def add_user_parser(devserver: argparse.ArgumentParser) -> None:
    """Add ``user add`` under the ``devserver`` subcommand."""
    sub = devserver.add_subparsers(dest="devserver_command", metavar="ACTION")
    user = sub.add_parser("user", help="users of a running devserver",
                          description="Users of the devserver running on --state-dir.")
    actions = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add", help="register a user (or log in an existing one) and print its login",
        description="Register NAME on the running devserver and print MXSYNC_HOMESERVER, "
        "MXSYNC_USER and MXSYNC_PASSWORD lines (`export $(mxsync devserver user add NAME)`). "
        "Without --password the password is derived from NAME and the server's secret, "
        "so running it again prints the same login.",
    )
    add.add_argument("name", help="the user's localpart, e.g. alice")
    add.add_argument("--password", default=None, help="default: derived, stable across runs")
    add.add_argument("--admin", action="store_true", help="make a server admin (on creation)")
    # SUPPRESS: a value given before `user` (`devserver --state-dir X user add`) stays.
    add.add_argument("--state-dir", default=argparse.SUPPRESS,
                     help=f"the running devserver's state dir (default {DEFAULT_STATE_DIR})")
    add.set_defaults(func=cmd_user_add)


def cmd_user_add(args: argparse.Namespace) -> int:
    async def main() -> None:
        hs = await DevServer.attach(getattr(args, "state_dir", DEFAULT_STATE_DIR))
        try:
            creds = await hs.register(args.name, args.password, admin=args.admin)
        finally:
            await hs.stop()
        print(f"MXSYNC_HOMESERVER={creds.homeserver}\nMXSYNC_USER={creds.user_id}\n"
              f"MXSYNC_PASSWORD={creds.password}")

    return run_command("mxsync devserver user add", main)
