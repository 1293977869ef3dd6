"""``mxsync fleet``: the fleet gateway's registration, and the MQTT bridge.

::

    mxsync fleet registration --server-name NAME --out FILE   the appservice registration
    mxsync fleet bridge ROOM --mqtt-port 1883 [--prefix mxsync]  relay MQTT devices

``registration`` writes the file a homeserver lists in ``app_service_config_files``
(``mxsync devserver --app-service FILE`` installs it in the devserver). ``bridge``
logs in as ``--user`` and relays JSON and Sparkplug B devices of a broker into ROOM
until Ctrl-C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio

from .common import add_login_args, client_from_args, run_command

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("fleet", help="many devices: appservice registration, MQTT bridge",
                            description="The fleet gateway's registration and the MQTT bridge.")
    actions = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    p = actions.add_parser("registration", help="write an application service registration")
    p.add_argument("--server-name", required=True, help="the homeserver's server name")
    p.add_argument("--out", required=True, help="file to write (mode 0600: it holds tokens)")
    p.add_argument("--sender", default="fleet", help="sender localpart (default: fleet)")
    p.add_argument("--prefix", default="dev_", help="device users' localpart prefix")
    p.set_defaults(func=cmd_registration)
    p = actions.add_parser("bridge", help="relay MQTT devices (JSON, Sparkplug B) into a room")
    p.add_argument("room", help="room id (!...)")
    p.add_argument("--mqtt-host", default="127.0.0.1")
    p.add_argument("--mqtt-port", type=int, default=1883)
    p.add_argument("--prefix", default="mxsync", help="JSON topic prefix (default: mxsync)")
    p.add_argument("--no-sparkplug", action="store_true", help="do not follow spBv1.0/#")
    add_login_args(p)
    p.set_defaults(func=cmd_bridge)


def cmd_registration(args: argparse.Namespace) -> int:
    from ..fleet.appservice import Registration

    reg = Registration.generate(args.server_name, sender_localpart=args.sender,
                                user_prefix=args.prefix)
    path = reg.write(Path(args.out))
    print(f"{path}: sender {reg.sender}, device users @{reg.user_prefix}*:{reg.server_name},"
          " rate_limited: false")
    print("List it in the homeserver's app_service_config_files and restart it "
          "(mxsync devserver --app-service FILE).")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    async def main() -> None:
        from ..fleet import MqttBridge

        async with client_from_args(args) as client, MqttBridge(
            client, args.room, host=args.mqtt_host, port=args.mqtt_port, prefix=args.prefix,
            sparkplug=not args.no_sparkplug,
        ):
            print(f"relaying MQTT {args.mqtt_host}:{args.mqtt_port} into {args.room}",
                  flush=True)
            await anyio.sleep_forever()

    return run_command("mxsync fleet bridge", main)
