"""MQTT test devices, run as child processes so that a test can kill -9 them.

``python mqtt_devices.py json PORT DEVICE N``: a plain JSON device (paho-mqtt 2)
with ``offline`` as its last will; publishes ``online``, N readings of
``temp``/``door``, answers commands on ``mxsync/DEVICE/cmd``.

``python mqtt_devices.py spb PORT GROUP NODE N``: a Sparkplug B edge node
(paho-mqtt 2, payloads by pysparkplug) with device ``pump``: NDEATH (bdSeq 0) as
its will, NBIRTH with aliases, DBIRTH, N NDATA by alias only, one DDATA; prints
every NCMD/DCMD it gets as ``CMD <topic> <metric>=<value>``.

Each prints ``READY`` once it has published, then waits to be killed.
"""

from __future__ import annotations

import json
import sys
import time

import paho.mqtt.client as mqtt
import pysparkplug as spb


def now_ms() -> int:
    return int(time.time() * 1000)


def client(name: str) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)


def json_device(port: int, device: str, n: int) -> None:
    c = client(f"json-{device}")
    c.will_set(f"mxsync/{device}/status", "offline", qos=1, retain=True)

    def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        cmd = json.loads(msg.payload)
        reply = ({"id": cmd["id"], "result": {"pong": cmd["args"].get("x")}}
                 if cmd["name"] == "ping" else {"id": cmd["id"], "error": "unknown"})
        c.publish(f"mxsync/{device}/cmd/result", json.dumps(reply), qos=1)

    c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=2)
    c.subscribe(f"mxsync/{device}/cmd", qos=1)
    c.loop_start()
    c.publish(f"mxsync/{device}/status", "online", qos=1, retain=True).wait_for_publish()
    t0 = now_ms() - n
    for i in range(n):
        c.publish(f"mxsync/{device}/data",
                  json.dumps({"t": t0 + i, "temp": 200 + i, "door": i % 2 == 0}),
                  qos=1).wait_for_publish()
    print("READY", flush=True)
    while True:
        time.sleep(1)


def spb_node(port: int, group: str, node: str, n: int) -> None:
    D = spb.DataType
    c = client(f"spb-{node}")
    death = spb.NDeath(timestamp=None, bd_seq_metric=spb.Metric(
        timestamp=None, name="bdSeq", datatype=D.INT64, value=0))
    c.will_set(f"spBv1.0/{group}/NDEATH/{node}", death.encode(), qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        cls = spb.DCmd if "/DCMD/" in msg.topic else spb.NCmd
        for m in cls.decode(msg.payload).metrics:
            print(f"CMD {msg.topic} {m.name}={m.value}", flush=True)

    c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=2)
    c.subscribe(f"spBv1.0/{group}/NCMD/{node}", qos=0)
    c.subscribe(f"spBv1.0/{group}/DCMD/{node}/#", qos=0)
    c.loop_start()
    seq = 0

    def send(kind: str, payload: bytes, device: str | None = None) -> None:
        topic = f"spBv1.0/{group}/{kind}/{node}" + (f"/{device}" if device else "")
        c.publish(topic, payload, qos=0).wait_for_publish()

    t = now_ms() - n - 10
    send("NBIRTH", spb.NBirth(timestamp=t, seq=seq, metrics=(
        spb.Metric(timestamp=t, name="bdSeq", datatype=D.INT64, value=0),
        spb.Metric(timestamp=t, name="Node Control/Rebirth", datatype=D.BOOLEAN, value=False),
        spb.Metric(timestamp=t, name="Temp 1", datatype=D.FLOAT, value=21.3, alias=1),
        spb.Metric(timestamp=t, name="Count", datatype=D.INT64, value=0, alias=2),
        spb.Metric(timestamp=t, name="Output/Setpoint", datatype=D.INT32, value=0, alias=3),
    )).encode())
    seq += 1
    send("DBIRTH", spb.DBirth(timestamp=t, seq=seq, metrics=(
        spb.Metric(timestamp=t, name="on", datatype=D.BOOLEAN, value=True, alias=10),
    )).encode(), "pump")
    for i in range(1, n + 1):
        seq = (seq + 1) % 256
        send("NDATA", spb.NData(timestamp=t + i, seq=seq, metrics=(
            spb.Metric(timestamp=t + i, name=None, datatype=D.INT64, value=i, alias=2),
        )).encode())
    seq = (seq + 1) % 256
    send("DDATA", spb.DData(timestamp=t + n + 1, seq=seq, metrics=(
        spb.Metric(timestamp=t + n + 1, name=None, datatype=D.BOOLEAN, value=False, alias=10),
    )).encode(), "pump")
    print("READY", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "json":
        json_device(port, sys.argv[3], int(sys.argv[4]))
    else:
        spb_node(port, sys.argv[3], sys.argv[4], int(sys.argv[5]))
