"""``mxsync fleet``: the fleet gateway's registration, and the MQTT bridge.

::

    mxsync fleet registration --server-name NAME --out FILE [--url URL | --no-url]
    mxsync fleet bridge ROOM --mqtt-port 1883 [--prefix mxsync] [--registration FILE]

``registration`` writes the file a homeserver lists in ``app_service_config_files``
(``mxsync devserver --app-service FILE`` installs it in the devserver); its ``url``
(default ``http://127.0.0.1:29740``) is where the homeserver pushes transactions to
the gateway. ``bridge`` relays JSON and Sparkplug B devices of a broker into ROOM
until Ctrl-C: logged in as ``--user`` (one login for every device), or with
``--registration`` as that appservice (each device its own user, commands through
the pushed transactions, listening on ``--listen-host``/``--listen-port``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .common import add_login_args, client_from_args, client_store, run_command

if TYPE_CHECKING:
    from ..client import Client
    from ..fleet.appservice import FleetGateway

__all__ = ["add_parser", "DEFAULT_URL"]

#: Where the homeserver pushes transactions unless told otherwise (loopback).
DEFAULT_URL = "http://127.0.0.1:29740"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("fleet", help="many devices: appservice registration, MQTT bridge",
                            description="The fleet gateway's registration and the MQTT bridge.")
    actions = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    p = actions.add_parser("registration", help="write an application service registration")
    p.add_argument("--server-name", required=True, help="the homeserver's server name")
    p.add_argument("--out", required=True, help="file to write (mode 0600: it holds tokens)")
    p.add_argument("--sender", default="fleet", help="sender localpart (default: fleet)")
    p.add_argument("--prefix", default="dev_", help="device users' localpart prefix")
    urls = p.add_mutually_exclusive_group()
    urls.add_argument("--url", default=DEFAULT_URL,
                      help=f"the gateway's transaction endpoint as the homeserver reaches it"
                           f" (default {DEFAULT_URL})")
    urls.add_argument("--no-url", action="store_true",
                      help="no endpoint: nothing is pushed, devices take no commands")
    p.set_defaults(func=cmd_registration)
    p = actions.add_parser("bridge", help="relay MQTT devices (JSON, Sparkplug B) into a room")
    p.add_argument("room", help="room id (!...)")
    p.add_argument("--mqtt-host", default="127.0.0.1")
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--prefix", default="mxsync", help="JSON topic prefix (default: mxsync)")
    p.add_argument("--no-sparkplug", action="store_true", help="do not follow spBv1.0/#")
    p.add_argument("--registration", help="run as this appservice (mxsync fleet registration):"
                   " each device its own user; --user and --password are not used")
    p.add_argument("--listen-host", default=None,
                   help="address of the transaction endpoint (default 127.0.0.1)")
    p.add_argument("--listen-port", type=int, default=None,
                   help="its port (default: the registration url's)")
    add_login_args(p)
    p.set_defaults(func=cmd_bridge)


def cmd_registration(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..fleet.appservice import Registration

    try:
        reg = Registration.generate(args.server_name, sender_localpart=args.sender,
                                    user_prefix=args.prefix,
                                    url=None if args.no_url else args.url)
    except ConfigError as exc:
        print(f"mxsync fleet registration: {exc}", file=sys.stderr)
        return 2
    path = reg.write(Path(args.out))
    print(f"{path}: sender {reg.sender}, device users @{reg.user_prefix}*:{reg.server_name},"
          f" rate_limited: false, url: {reg.url or 'none (no commands)'}")
    print("List it in the homeserver's app_service_config_files and restart it "
          "(mxsync devserver --app-service FILE).")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    async def relay(through: Client | FleetGateway) -> None:
        from ..fleet import MqttBridge

        async with MqttBridge(through, args.room, host=args.mqtt_host, port=args.mqtt_port,
                              prefix=args.prefix, sparkplug=not args.no_sparkplug):
            print(f"relaying MQTT {args.mqtt_host}:{args.mqtt_port} into {args.room}",
                  flush=True)
            await anyio.sleep_forever()

    async def main() -> None:
        if args.registration is None:
            async with client_from_args(args) as client:
                await relay(client)
            return
        from ..client import Client
        from ..errors import ConfigError
        from ..fleet.appservice import FleetGateway, Registration
        from ..protocol import api

        if not args.homeserver:
            raise ConfigError("no homeserver: pass --homeserver or set MXSYNC_HOMESERVER")
        reg = Registration.load(Path(args.registration))
        args.user = reg.sender  # the store's default name
        async with Client(args.homeserver, reg.sender, access_token=reg.as_token,
                          store_path=client_store(args), encryption=False,
                          sync=False) as bot:
            await bot.request(api.join(args.room))
            async with FleetGateway(bot, reg, args.room, listen_host=args.listen_host,
                                    listen_port=args.listen_port) as gw:
                if gw.endpoint is not None:
                    print(f"taking the homeserver's transactions on {gw.endpoint.url}",
                          flush=True)
                await relay(gw)

    return run_command("mxsync fleet bridge", main)
