"""``mxsync room``: create and join rooms from the command line.

::

    mxsync room create NAME [--invite USER ...] [--reader USER ...]   prints the room id
    mxsync room join ROOM

A USER without a server (``bob``) is taken to be on the server of ``--user``.
``create`` makes the creator and the invitees writers (they may send mxsync's
events); ``--reader`` invites a user who may only read (a dashboard).
"""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import add_login_args, client_from_args, run_command

__all__ = ["add_parser", "full_user_id"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("room", help="create and join rooms",
                            description="Create and join rooms.")
    actions = parser.add_subparsers(dest="room_command", metavar="ACTION", required=True)
    p = actions.add_parser("create", help="create a room, invite its members, print its id")
    p.add_argument("name", help="the room's name")
    p.add_argument("--invite", action="append", default=[], metavar="USER",
                   help="invite a writer (repeatable): @bob:server or bob")
    p.add_argument("--reader", action="append", default=[], metavar="USER",
                   help="invite a reader, who may not send mxsync events (repeatable)")
    p.add_argument("--topic", default=None)
    add_login_args(p)
    p.set_defaults(func=cmd_create)
    p = actions.add_parser("join", help="join a room you are invited to (or a public one)")
    p.add_argument("room", help="room id (!...) or alias (#...)")
    add_login_args(p)
    p.set_defaults(func=cmd_join)


def full_user_id(user: str, like: str | None) -> str:
    """``bob`` -> ``@bob:server`` with the server of ``like`` (``@alice:server``)."""
    if user.startswith("@"):
        return user
    server = (like or "").partition(":")[2]
    if not server:
        raise ConfigError(f"{user!r}: give a full user id (@{user}:server)")
    return f"@{user}:{server}"


def cmd_create(args: argparse.Namespace) -> int:
    async def main() -> None:
        writers = [full_user_id(u, args.user) for u in args.invite]
        readers = [full_user_id(u, args.user) for u in args.reader]
        async with client_from_args(args) as client:
            room = await client.create_room(args.name, invite=writers + readers,
                                            writers=writers, topic=args.topic)
        print(room)

    return run_command("mxsync room create", main)


def cmd_join(args: argparse.Namespace) -> int:
    async def main() -> None:
        async with client_from_args(args) as client:
            print(await client.join(args.room))

    return run_command("mxsync room join", main)
