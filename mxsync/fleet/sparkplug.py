"""Sparkplug B to mxsync: the host application's state machine, sans-I/O.

Owns what a Sparkplug host must remember per edge node: the node's and its
devices' births (metric names, aliases, datatypes), the node's ``bdSeq`` and
the ``seq`` expected next. :meth:`SparkplugHost.receive` takes one MQTT
message (topic, payload bytes) and returns what the bridge must do, as
values; it performs no I/O. The payload codec is ``pysparkplug``'s (protobuf,
the official ``sparkplug_b.proto``); this module owns none of the encoding.

Mapping (docs/PROTOCOL.md section 7, "Sparkplug B"):
- an edge node ``G/N`` is the mxsync device ``G/N``, a Sparkplug device ``D``
  of it is ``G/N/D``; characters a device or sensor id cannot have become ``_``;
- a metric is a sensor of that device, named by the metric's name (found by
  its alias in data messages); NBIRTH/DBIRTH values and NDATA/DDATA values are
  readings at the metric's timestamp (the payload's when it has none);
- NBIRTH / DBIRTH make the device online; NDEATH (the broker's last will of
  the node, or its clean goodbye) makes the node and all its devices offline;
  DDEATH the device.

Invariants (Sparkplug B 3.0):
- ``seq`` runs 0..255 over every NBIRTH/NDATA/DBIRTH/DDATA/DDEATH of a node,
  NBIRTH being 0. A message whose ``seq`` is not the next, data of a node or
  device with no birth, or an alias without a birth that names it, yields a
  :class:`Rebirth` request (NCMD ``Node Control/Rebirth``); its values are
  not taken (nothing is guessed).
- An NDEATH counts only if its ``bdSeq`` equals that of the node's current
  birth: a will left over from an earlier connection is ignored.
- Malformed payloads are skipped and counted, never raised.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass, field

import pysparkplug as spb

__all__ = [
    "Online",
    "Offline",
    "Readings",
    "Rebirth",
    "Action",
    "SparkplugHost",
    "device_id_of",
    "sensor_id_of",
    "rebirth_payload",
    "command_payload",
]

log = logging.getLogger("mxsync.fleet.sparkplug")

_BAD = re.compile(r"[^A-Za-z0-9_.:/-]")
_REBIRTH_METRIC = "Node Control/Rebirth"
_BD_SEQ = "bdSeq"
_INT_TYPES = frozenset((spb.DataType.INT8, spb.DataType.INT16, spb.DataType.INT32,
                        spb.DataType.INT64, spb.DataType.UINT8, spb.DataType.UINT16,
                        spb.DataType.UINT32, spb.DataType.UINT64, spb.DataType.DATETIME))
_FLOAT_TYPES = frozenset((spb.DataType.FLOAT, spb.DataType.DOUBLE))
_STR_TYPES = frozenset((spb.DataType.STRING, spb.DataType.TEXT, spb.DataType.UUID))


def _clean(part: str) -> str:
    out = _BAD.sub("_", part)
    return out if out and out[0].isalnum() else "x" + out


def device_id_of(group: str, node: str, device: str | None = None) -> str:
    """The mxsync device id of a Sparkplug edge node or device."""
    parts = [group, node] if device is None else [group, node, device]
    return "/".join(_clean(p) for p in parts)[:128]


def sensor_id_of(metric: str) -> str:
    """The mxsync sensor id of a metric name ("Inputs/Temp 1" -> "Inputs/Temp_1")."""
    return _clean(metric)[:128]


def _float32(v: float) -> float:
    """A FLOAT metric as its shortest decimal (21.3, not 21.299999237060547)."""
    packed = struct.pack("<f", v)
    for digits in range(6, 10):
        text = f"{v:.{digits}g}"
        if struct.pack("<f", float(text)) == packed:
            return float(text)
    return v


@dataclass(frozen=True, slots=True)
class Online:
    device: str
    #: The sensors the birth declares, with their values: (sensor, t_ms, value).
    readings: tuple[tuple[str, int, int | float | bool | str], ...] = ()


@dataclass(frozen=True, slots=True)
class Offline:
    device: str
    reason: str


@dataclass(frozen=True, slots=True)
class Readings:
    device: str
    readings: tuple[tuple[str, int, int | float | bool | str], ...]


@dataclass(frozen=True, slots=True)
class Rebirth:
    """Ask the node ``group/node`` to be born again (NCMD Node Control/Rebirth)."""

    group: str
    node: str
    why: str


Action = Online | Offline | Readings | Rebirth


@dataclass(slots=True)
class _Node:
    birth: spb.NBirth | None = None
    bd_seq: int | None = None
    next_seq: int = 0
    devices: dict[str, spb.DBirth] = field(default_factory=dict)
    #: A rebirth was asked for and not yet answered: do not ask again per message.
    asked: bool = False


class SparkplugHost:
    """The births and sequence of every edge node seen, and what each message means."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, str], _Node] = {}
        #: Payloads that would not decode, and metrics whose value was not taken.
        self.malformed = 0
        self.skipped_metrics = 0
        self.rebirths_asked = 0

    def dtype(self, group: str, node: str, device: str | None, metric: str) -> spb.DataType | None:
        """The datatype the birth gave ``metric`` (for commands), if known."""
        n = self._nodes.get((group, node))
        if n is None:
            return None
        birth = n.birth if device is None else n.devices.get(device)
        if birth is None:
            return None
        for m in birth.metrics:
            if m.name == metric:
                return m.datatype
        return None

    def receive(self, topic: str, payload: bytes) -> list[Action]:
        try:
            t = spb.Topic.from_str(topic)
        except (ValueError, TypeError, IndexError):
            return []
        kind, group, node = t.message_type, t.group_id, t.edge_node_id
        if group is None or node is None or not isinstance(kind, spb.MessageType):
            return []
        n = self._nodes.setdefault((group, node), _Node())
        try:
            return self._receive(n, kind, group, node, t.device_id, payload)
        except Exception as exc:  # noqa: BLE001 - a payload must never stop the bridge
            self.malformed += 1
            log.warning("skipping a malformed Sparkplug %s on %s: %s", kind, topic, exc)
            return []

    def _ask(self, n: _Node, group: str, node: str, why: str) -> list[Action]:
        if n.asked:
            return []
        n.asked = True
        self.rebirths_asked += 1
        log.info("asking Sparkplug node %s/%s for a rebirth: %s", group, node, why)
        return [Rebirth(group, node, why)]

    def _seq_ok(self, n: _Node, seq: int | None) -> bool:
        if seq is None or seq != n.next_seq:
            return False
        n.next_seq = (seq + 1) % 256
        return True

    def _receive(self, n: _Node, kind: spb.MessageType, group: str, node: str,
                 device: str | None, payload: bytes) -> list[Action]:
        M = spb.MessageType
        if kind == M.NBIRTH:
            birth = spb.NBirth.decode(payload)
            n.birth, n.devices, n.asked = birth, {}, False
            n.bd_seq = next((int(m.value) for m in birth.metrics  # type: ignore[arg-type]
                             if m.name == _BD_SEQ and m.value is not None), None)
            n.next_seq = (birth.seq + 1) % 256
            return [Online(device_id_of(group, node), self._values(birth, birth.timestamp))]
        if kind == M.NDEATH:
            death = spb.NDeath.decode(payload)
            bd = death.bd_seq_metric.value
            if n.birth is None or (n.bd_seq is not None and bd != n.bd_seq):
                log.info("ignoring an NDEATH of %s/%s with bdSeq %s (current %s)", group,
                         node, bd, n.bd_seq)
                return []
            out: list[Action] = [Offline(device_id_of(group, node, d), "last-will")
                                 for d in n.devices]
            out.append(Offline(device_id_of(group, node), "last-will"))
            n.birth, n.devices = None, {}
            return out
        if kind in (M.NCMD, M.DCMD, M.STATE):
            return []
        if n.birth is None:
            return self._ask(n, group, node, f"{kind} before an NBIRTH")
        if kind == M.DBIRTH and device is not None:
            dbirth = spb.DBirth.decode(payload)
            if not self._seq_ok(n, dbirth.seq):
                return self._ask(n, group, node, f"seq {dbirth.seq}, expected {n.next_seq}")
            n.devices[device] = dbirth
            return [Online(device_id_of(group, node, device),
                           self._values(dbirth, dbirth.timestamp))]
        if kind == M.DDEATH and device is not None:
            ddeath = spb.DDeath.decode(payload)
            if not self._seq_ok(n, ddeath.seq):
                return self._ask(n, group, node, f"seq {ddeath.seq}, expected {n.next_seq}")
            if n.devices.pop(device, None) is None:
                return []
            return [Offline(device_id_of(group, node, device), "last-will")]
        if kind == M.NDATA:
            birth_n: spb.NBirth = n.birth
            data = spb.NData.decode(payload, birth=birth_n)
            if not self._seq_ok(n, data.seq):
                return self._ask(n, group, node, f"seq {data.seq}, expected {n.next_seq}")
            return [Readings(device_id_of(group, node), self._values(data, data.timestamp))]
        if kind == M.DDATA and device is not None:
            dbirth_d = n.devices.get(device)
            if dbirth_d is None:
                return self._ask(n, group, node, f"DDATA of {device} before its DBIRTH")
            ddata = spb.DData.decode(payload, birth=dbirth_d)
            if not self._seq_ok(n, ddata.seq):
                return self._ask(n, group, node, f"seq {ddata.seq}, expected {n.next_seq}")
            return [Readings(device_id_of(group, node, device),
                             self._values(ddata, ddata.timestamp))]
        return []

    def _values(self, payload: spb.NBirth | spb.DBirth | spb.NData | spb.DData,
                t_ms: int) -> tuple[tuple[str, int, int | float | bool | str], ...]:
        out: list[tuple[str, int, int | float | bool | str]] = []
        for m in payload.metrics:
            if m.name is None or m.name == _BD_SEQ or m.name.startswith("Node Control/"):
                continue
            if m.is_null or m.value is None:
                continue
            t = m.timestamp if m.timestamp is not None else t_ms
            v = m.value
            if m.datatype in _INT_TYPES and type(v) is int:
                out.append((sensor_id_of(m.name), t, v))
            elif m.datatype in _FLOAT_TYPES and isinstance(v, float | int):
                f = float(v)
                out.append((sensor_id_of(m.name), t,
                            _float32(f) if m.datatype == spb.DataType.FLOAT else f))
            elif m.datatype == spb.DataType.BOOLEAN and isinstance(v, bool):
                out.append((sensor_id_of(m.name), t, v))
            elif m.datatype in _STR_TYPES and isinstance(v, str):
                out.append((sensor_id_of(m.name), t, v))
            else:
                self.skipped_metrics += 1  # arrays, datasets, bytes: no reading kind
        return tuple(out)


def rebirth_payload(now_ms: int) -> bytes:
    """The NCMD that asks a node for a rebirth."""
    return spb.NCmd(timestamp=now_ms, metrics=(spb.Metric(
        timestamp=now_ms, name=_REBIRTH_METRIC, datatype=spb.DataType.BOOLEAN, value=True),
    )).encode(include_dtypes=True)


def command_payload(now_ms: int, metric: str, value: int | float | bool | str,
                    dtype: spb.DataType | None, *, device: bool) -> bytes:
    """An NCMD (``device=False``) or DCMD writing ``value`` to ``metric``."""
    if dtype is None:
        dtype = (spb.DataType.BOOLEAN if isinstance(value, bool) else spb.DataType.INT64
                 if isinstance(value, int) else spb.DataType.DOUBLE
                 if isinstance(value, float) else spb.DataType.STRING)
    metric_ = spb.Metric(timestamp=now_ms, name=metric, datatype=dtype, value=value)
    cls = spb.DCmd if device else spb.NCmd
    return cls(timestamp=now_ms, metrics=(metric_,)).encode(include_dtypes=True)
