"""MqttBridge: devices that speak MQTT (plain JSON or Sparkplug B) as mxsync devices.

Owns one MQTT connection (aiomqtt, on paho-mqtt 2) and, for every device seen
on it, a *slot*: an mxsync :class:`~mxsync.streams.Publisher` for its readings
(``presence=False``) and a :class:`~mxsync.streams.presence.Presence` of the
bridge's own for its birth and death, both on the bridge's Matrix client, so
one login carries many devices. Behind a
:class:`~mxsync.fleet.appservice.FleetGateway` instead of a Client, each MQTT
device is its own user of the appservice (added when first seen), and its
commands come through the gateway's transaction endpoint. The Sparkplug rules
live in :mod:`mxsync.fleet.sparkplug` (sans-I/O); this module does the I/O.

Topics (docs/PROTOCOL.md section 7):

- JSON: ``<prefix>/<device>/status`` ``online`` / ``offline`` (a device sets
  ``offline`` as its MQTT last will and publishes ``online`` when it connects);
  ``<prefix>/<device>/data`` ``{"<sensor>": value, ..., "t": ms?}``; commands go
  out on ``<prefix>/<device>/cmd`` ``{"id", "name", "args"}`` and come back on
  ``<prefix>/<device>/cmd/result`` ``{"id", "result"}`` or ``{"id", "error"}``.
- Sparkplug B: ``spBv1.0/<group>/{NBIRTH,NDATA,NDEATH,DBIRTH,DDATA,DDEATH}/...``;
  commands go out as NCMD / DCMD writing ``args["value"]`` to the metric named
  by the command (acknowledged once handed to the broker: Sparkplug has no
  command acknowledgement); a sequence gap is answered with NCMD
  ``Node Control/Rebirth``.

Invariants:
- A device's death on MQTT (the broker's last will, NDEATH, DDEATH, or
  ``offline``) becomes ``online: false, reason: "last-will"`` in Matrix after
  the readings before it are stored; if the bridge itself dies, the slots'
  MSC4140 wills (armed by Presence) turn its devices offline.
- Readings go through the publishers, so everything a single device has holds
  per bridged device: persisted before counted, sent once, in ``seq`` order.
- Malformed MQTT payloads are skipped, counted and logged once per topic kind;
  nothing stops the message loop. Losing the broker is retried with bounded
  backoff.
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from ..engine.surface import Engine
from ..engine.taskgroups import StackOwner
from ..errors import ConfigError, MxsyncError
from ..protocol.readings import validate_device_id, validate_sensor_id
from ..streams.commands import Command
from ..streams.presence import Presence
from . import sparkplug as sp
from .appservice import FleetGateway

if TYPE_CHECKING:
    import aiomqtt

    from ..client import Client
    from ..streams import Publisher

__all__ = ["MqttBridge", "BridgeStatistics"]

log = logging.getLogger("mxsync.fleet.bridge")

_decoder = msgspec.json.Decoder()


def _now_ms() -> int:
    return int(time.time() * 1000)


class BridgeStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`MqttBridge.statistics` reports since the bridge started."""

    #: MQTT messages taken in.
    messages: int
    #: Readings handed to the devices' publishers.
    readings: int
    #: MQTT payloads that were not understood (skipped).
    malformed: int
    #: Readings refused by the publisher's checks (bad value, id), skipped.
    refused: int
    #: Devices with a slot now (online in Matrix).
    devices: int
    #: Births and deaths relayed.
    births: int
    deaths: int
    #: Commands relayed to MQTT devices, and rebirths asked of Sparkplug nodes.
    commands: int
    rebirths_asked: int


@dataclass(eq=False)
class _Slot:
    device: str
    #: "json", or ("spb", group, node, device or None).
    kind: str | tuple[str, str, str, str | None]
    pub: Publisher | None = None
    closing: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)
    reason: str = "shutdown"


class MqttBridge(StackOwner):
    """Relays MQTT devices into one room through one Matrix client.

    ``client`` is a Client (every device speaks through its login) or an
    entered :class:`FleetGateway` of ``room_id`` (each device its own appservice
    user, registered and let in when first seen; commands reach the devices
    while the gateway takes the homeserver's transactions).
    ``async with MqttBridge(client, room_id, port=1883) as bridge`` connects,
    subscribes and relays until the block ends. Keyword arguments:
    ``host``/``port`` of the broker, ``prefix`` ("mxsync") of the JSON topics,
    ``sparkplug`` (True) to follow ``spBv1.0/#``, ``offline_after`` (30.0): the
    delay of each device's Matrix last will, and ``publisher`` (a dict of
    keyword arguments for every device's Publisher, e.g. ``max_age``).
    """

    def __init__(
        self,
        client: Client | FleetGateway,
        room_id: str,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        prefix: str = "mxsync",
        sparkplug: bool = True,
        offline_after: float = 30.0,
        publisher: dict[str, Any] | None = None,
        identifier: str | None = None,
    ) -> None:
        if not isinstance(room_id, str) or not room_id.startswith("!"):
            raise ConfigError(f"not a room id: {room_id!r}")
        if type(port) is not int or not 0 < port < 65536:
            raise ConfigError(f"port must be within 1..65535, got {port!r}")
        if not isinstance(prefix, str) or not prefix or "/" in prefix or "+" in prefix \
                or "#" in prefix:
            raise ConfigError(f"prefix must be one MQTT topic level, got {prefix!r}")
        if isinstance(client, FleetGateway) and client.room_id != room_id:
            # The bridge names one room; a gateway that makes its own rooms places
            # devices by group, which the bridge's topics do not carry (yet).
            raise ConfigError(f"the bridge needs a gateway of its one room {room_id}; "
                              f"this gateway serves {client.room_id or 'rooms it makes'}")
        self._client = client
        self._room = room_id
        self._host, self._port = host, port
        self._prefix = prefix
        self._sparkplug = sparkplug
        self._offline_after = offline_after
        self._pub_kw = dict(publisher or {})
        self._pub_kw.pop("presence", None)
        self._identifier = identifier or f"mxsync-bridge-{_now_ms()}"
        self._host_sm = sp.SparkplugHost()
        self._slots: dict[str, _Slot] = {}
        self._pending: dict[tuple[str, str], Command] = {}
        self._mqtt: aiomqtt.Client | None = None
        self._tg: TaskGroup | None = None
        self._warned: set[str] = set()
        self._messages = self._readings = self._malformed = self._refused = 0
        self._births = self._deaths = self._commands = 0
        self.connected = anyio.Event()

    # -- lifecycle -----------------------------------------------------------

    async def _setup(self, stack: AsyncExitStack) -> None:
        self._tg = tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        await tg.start(self._run)

    async def _closing(self, exc_type: type[BaseException] | None) -> None:
        # A clean exit says goodbye for every device; a crash leaves it to the wills.
        if exc_type is None:
            with anyio.move_on_after(60):
                for slot in list(self._slots.values()):
                    slot.reason = "shutdown"
                    slot.closing.set()
                for slot in list(self._slots.values()):
                    await slot.closed.wait()

    def statistics(self) -> BridgeStatistics:
        return BridgeStatistics(
            messages=self._messages, readings=self._readings,
            malformed=self._malformed + self._host_sm.malformed, refused=self._refused,
            devices=len(self._slots), births=self._births, deaths=self._deaths,
            commands=self._commands, rebirths_asked=self._host_sm.rebirths_asked,
        )

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        import aiomqtt

        delay, started = 0.5, False
        while True:
            try:
                async with aiomqtt.Client(self._host, self._port,
                                          identifier=self._identifier) as mqtt:
                    self._mqtt = mqtt
                    await mqtt.subscribe(f"{self._prefix}/+/status", qos=1)
                    await mqtt.subscribe(f"{self._prefix}/+/data", qos=1)
                    await mqtt.subscribe(f"{self._prefix}/+/cmd/result", qos=1)
                    if self._sparkplug:
                        await mqtt.subscribe("spBv1.0/#", qos=0)
                    delay = 0.5
                    self.connected.set()
                    if not started:
                        started = True
                        task_status.started()
                    async for msg in mqtt.messages:
                        payload = msg.payload if isinstance(msg.payload, bytes) else \
                            str(msg.payload).encode()
                        await self._on_message(str(msg.topic), payload)
            except aiomqtt.MqttError as exc:
                self._mqtt = None
                self.connected = anyio.Event()
                log.warning("MQTT broker %s:%d: %s; reconnecting in %.1fs", self._host,
                            self._port, exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- messages ---------------------------------------------------------------

    def _bad(self, kind: str, topic: str, why: object) -> None:
        self._malformed += 1
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("skipping a malformed %s message on %s: %s", kind, topic, why)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        self._messages += 1
        if topic.startswith("spBv1.0/"):
            for action in self._host_sm.receive(topic, payload):
                await self._apply(action, topic)
            return
        parts = topic.split("/")
        if len(parts) < 3 or parts[0] != self._prefix:
            return
        device, what = parts[1], "/".join(parts[2:])
        try:
            validate_device_id(device)
        except ConfigError as exc:
            self._bad("json", topic, exc)
            return
        if what == "status":
            text = payload.decode(errors="replace").strip()
            if text == "online":
                await self._birth(device, "json")
            elif text == "offline":
                await self._death(device, "last-will")
            else:
                self._bad("json status", topic, repr(text[:40]))
        elif what == "data":
            await self._json_data(device, topic, payload)
        elif what == "cmd/result":
            self._json_result(device, topic, payload)

    async def _json_data(self, device: str, topic: str, payload: bytes) -> None:
        try:
            data = _decoder.decode(payload)
        except msgspec.DecodeError as exc:
            self._bad("json data", topic, exc)
            return
        if not isinstance(data, dict):
            self._bad("json data", topic, "not an object")
            return
        t = data.pop("t", None)
        if t is not None and type(t) is not int:
            self._bad("json data", topic, f"t is not an int: {t!r}")
            return
        t_ms = _now_ms() if t is None else t
        slot = await self._birth(device, "json")
        self._publish(slot, [(k, t_ms, v) for k, v in data.items()])

    def _json_result(self, device: str, topic: str, payload: bytes) -> None:
        try:
            data = _decoder.decode(payload)
            cid = data["id"]
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            self._bad("json cmd/result", topic, exc)
            return
        cmd = self._pending.pop((device, str(cid)), None)
        if cmd is None or self._tg is None:
            return
        if "error" in data:
            self._tg.start_soon(cmd.fail, str(data["error"]) or "error")
        else:
            self._tg.start_soon(cmd.ok, data.get("result"))

    async def _apply(self, action: sp.Action, topic: str) -> None:
        if isinstance(action, sp.Online):
            kind = _spb_kind(topic)
            slot = await self._birth(action.device, kind, rebirth=True)
            self._publish(slot, list(action.readings))
        elif isinstance(action, sp.Readings):
            self._publish(await self._birth(action.device, _spb_kind(topic)),
                          list(action.readings))
        elif isinstance(action, sp.Offline):
            await self._death(action.device, action.reason)
        elif isinstance(action, sp.Rebirth):
            await self._mqtt_publish(f"spBv1.0/{action.group}/NCMD/{action.node}",
                                     sp.rebirth_payload(_now_ms()))

    def _publish(self, slot: _Slot, readings: list[tuple[str, int, Any]]) -> None:
        pub = slot.pub
        assert pub is not None
        for sensor, t_ms, value in readings:
            try:
                validate_sensor_id(sensor)
                try:
                    pub.publish(sensor, value, t=t_ms)
                except ConfigError:
                    if type(value) is not float:
                        raise
                    # A double needing more than 9 decimals: rounded to 9 (counted).
                    pub.publish(sensor, round(value, 9), t=t_ms)
                self._readings += 1
            except MxsyncError as exc:
                self._refused += 1
                key = f"refused {slot.device}/{sensor}"
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("device %s: reading of %s refused: %s", slot.device, sensor, exc)

    # -- slots ------------------------------------------------------------------

    async def _birth(self, device: str, kind: str | tuple[str, str, str, str | None], *,
                     rebirth: bool = False) -> _Slot:
        slot: _Slot | None = self._slots.get(device)
        if slot is not None and slot.closing.is_set():
            await slot.closed.wait()  # died a moment ago: born again after the death
            slot = self._slots.get(device)
        if slot is not None:
            return slot
        assert self._tg is not None
        started: _Slot = await self._tg.start(self._slot, device, kind)
        return started

    async def _death(self, device: str, reason: str) -> None:
        slot = self._slots.get(device)
        if slot is None:
            return
        slot.reason = reason
        slot.closing.set()  # the slot flushes and announces the death in its own task

    async def _slot(self, device: str, kind: str | tuple[str, str, str, str | None], *,
                    task_status: TaskStatus[_Slot]) -> None:
        slot = _Slot(device, kind)
        self._slots[device] = slot
        try:
            gw = self._client
            engine: Engine
            if isinstance(gw, FleetGateway):
                await gw.add_devices([device])  # idempotent: a known user stays as it is
                publisher = gw.publisher(device, presence=False, **self._pub_kw)
                engine = gw.engine(device)  # type: ignore[assignment]  # Engine by delegation
            else:
                publisher, engine = gw.publisher(self._room, device=device, presence=False,
                                                 **self._pub_kw), gw
            async with publisher as pub:
                slot.pub = pub
                presence = Presence(
                    engine, self._room, device, session=pub.session,
                    description=f"via MQTT ({'json' if kind == 'json' else 'Sparkplug B'})",
                    last_will=True, offline_after=self._offline_after, heartbeat=60.0,
                    last_activity=lambda: 0.0,
                    last_seq=lambda: pub.statistics().next_seq - 1,
                )
                self._births += 1
                async with anyio.create_task_group() as tg:
                    tg.start_soon(presence.run)
                    tg.start_soon(self._serve_commands, slot, pub)
                    task_status.started(slot)
                    await slot.closing.wait()
                    tg.cancel_scope.cancel()
                with anyio.move_on_after(30):
                    await pub.flush()
                await presence.shutdown(slot.reason)
                self._deaths += 1
        finally:
            if self._slots.get(device) is slot:
                del self._slots[device]
            slot.closed.set()

    # -- commands ---------------------------------------------------------------

    async def _serve_commands(self, slot: _Slot, pub: Publisher) -> None:
        async for cmd in pub.commands():
            self._commands += 1
            try:
                await self._relay(slot, cmd)
            except Exception as exc:  # noqa: BLE001 - answer the operator whatever failed
                if not cmd.answered:
                    await cmd.fail(f"the bridge could not relay it: {exc}")

    async def _relay(self, slot: _Slot, cmd: Command) -> None:
        if slot.kind == "json":
            self._pending[(slot.device, cmd.id)] = cmd
            body = msgspec.json.encode({"id": cmd.id, "name": cmd.name, "args": cmd.args})
            await self._mqtt_publish(f"{self._prefix}/{slot.device}/cmd", body, qos=1)
            return  # answered when the device's cmd/result comes
        assert isinstance(slot.kind, tuple)
        _, group, node, spdev = slot.kind
        if "value" not in cmd.args:
            await cmd.fail('a Sparkplug command needs args {"value": ...}')
            return
        value = cmd.args["value"]
        dtype = self._host_sm.dtype(group, node, spdev, cmd.name)
        body = sp.command_payload(_now_ms(), cmd.name, value, dtype, device=spdev is not None)
        topic = (f"spBv1.0/{group}/NCMD/{node}" if spdev is None
                 else f"spBv1.0/{group}/DCMD/{node}/{spdev}")
        await self._mqtt_publish(topic, body)
        await cmd.ok({"topic": topic})

    async def _mqtt_publish(self, topic: str, payload: bytes, *, qos: int = 0) -> None:
        with anyio.fail_after(30):
            while self._mqtt is None:
                await self.connected.wait()
            await self._mqtt.publish(topic, payload, qos=qos)


def _spb_kind(topic: str) -> tuple[str, str, str, str | None]:
    parts = topic.split("/")
    return ("spb", parts[1], parts[3], parts[4] if len(parts) > 4 else None)
