"""``python -m examples.iot_sensor.mqtt_fleet --port 1883``: devices that speak MQTT.

A small fleet of the kind a microcontroller runs, with no Matrix in it: two
plain-JSON pumps (``mxsync/pump-1/data``, ``offline`` as their MQTT last will)
and a Sparkplug B edge node ``Plant/line1`` with a device ``press`` (NBIRTH and
DBIRTH with aliases, NDATA/DDATA by alias, NDEATH as its will). The demo relays
them into the sensors room with ``mxsync fleet bridge``; the dashboard shows
them next to the Python devices. Readings every ``--interval`` seconds until
Ctrl-C or SIGTERM (then the clients disconnect without a goodbye: the broker's
last wills take them offline, as it would for a device losing power).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pysparkplug as spb

D = spb.DataType


def _ms() -> int:
    return int(time.time() * 1000)


def _client(name: str, port: int, will: tuple[str, bytes, int]) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.will_set(will[0], will[1], qos=will[2], retain=will[2] == 1)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    return c


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--interval", type=float, default=1.0)
    args = p.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pumps = {}
    for name in ("pump-1", "pump-2"):
        pumps[name] = c = _client(f"demo-{name}", args.port,
                                  (f"mxsync/{name}/status", b"offline", 1))
        c.publish(f"mxsync/{name}/status", "online", qos=1, retain=True)
    death = spb.NDeath(timestamp=None, bd_seq_metric=spb.Metric(
        timestamp=None, name="bdSeq", datatype=D.INT64, value=0)).encode()
    node = _client("demo-line1", args.port, ("spBv1.0/Plant/NDEATH/line1", death, 0))
    rebirth = threading.Event()
    rebirth.set()  # the first birth

    def on_ncmd(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if any(m.name == "Node Control/Rebirth" and m.value
               for m in spb.NCmd.decode(msg.payload).metrics):
            rebirth.set()  # a host saw a gap (or came late): born again, seq from 0

    node.on_message = on_ncmd
    node.subscribe("spBv1.0/Plant/NCMD/line1", qos=0)

    def births() -> int:
        t = _ms()
        node.publish("spBv1.0/Plant/NBIRTH/line1", spb.NBirth(timestamp=t, seq=0, metrics=(
            spb.Metric(timestamp=t, name="bdSeq", datatype=D.INT64, value=0),
            spb.Metric(timestamp=t, name="Line speed", datatype=D.DOUBLE, value=1.2, alias=1),
        )).encode())
        node.publish("spBv1.0/Plant/DBIRTH/line1/press", spb.DBirth(timestamp=t, seq=1, metrics=(
            spb.Metric(timestamp=t, name="Force", datatype=D.INT32, value=0, alias=2),
        )).encode())
        return 1

    seq, i = 1, 0
    print("publishing", flush=True)
    while not stop.wait(args.interval):
        if rebirth.is_set():
            rebirth.clear()
            seq = births()
        i += 1
        t = _ms()
        for k, (name, c) in enumerate(pumps.items()):
            # Sensor ids are the room's: each pump names its own.
            c.publish(f"mxsync/{name}/data", json.dumps({
                "t": t, f"{name}/flow": 40 + k * 5 + (i % 7),
                f"{name}/running": i % 20 != 0}), qos=1)
        seq = (seq + 1) % 256
        node.publish("spBv1.0/Plant/NDATA/line1", spb.NData(timestamp=t, seq=seq, metrics=(
            spb.Metric(timestamp=t, name=None, datatype=D.DOUBLE, alias=1,
                       value=round(1.2 + 0.1 * math.sin(i / 5), 3)),
        )).encode())
        seq = (seq + 1) % 256
        node.publish("spBv1.0/Plant/DDATA/line1/press", spb.DData(timestamp=t, seq=seq, metrics=(
            spb.Metric(timestamp=t, name=None, datatype=D.INT32, alias=2, value=900 + i % 50),
        )).encode())
    for c in (*pumps.values(), node):
        c.loop_stop()
        sock = c.socket()
        if sock is not None:
            sock.close()  # no DISCONNECT: the broker's last wills fire
    return 0


if __name__ == "__main__":
    sys.exit(main())
