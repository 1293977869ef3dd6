"""Yjs v1 byte formats that mxsync reads and writes itself: varuints, state
vectors and delete sets.

pycrdt encodes and applies updates; these few structures are what the engine
needs to *look into* (is this snapshot newer? which clock did I last send?)
and to *build* (a baseline state vector for ``doc.get_update``, the delete set
of local deletions since the last batch). Pure functions, no I/O.

Layouts (Yjs v1, ``lib0`` encoding):
- varuint: 7 bits per byte, least significant group first, high bit = more.
- state vector: varuint count, then count x (client varuint, clock varuint).
- delete set: varuint client count, then per client: client varuint, range
  count varuint, then range count x (clock varuint, length varuint).
"""

from __future__ import annotations

from ..errors import ProtocolError

__all__ = ["encode_varuint", "encode_state_vector", "decode_state_vector", "DeleteSet"]

#: A varuint of a 64-bit value takes at most 10 bytes.
MAX_VARINT_BYTES = 10


def encode_varuint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varuint of a negative number: {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Reader:
    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def varuint(self) -> int:
        value = shift = 0
        for _ in range(MAX_VARINT_BYTES):
            if self.pos >= len(self.buf):
                raise ProtocolError(f"{self.what} truncated")
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise ProtocolError(f"{self.what} varint longer than {MAX_VARINT_BYTES} bytes")

    def left(self) -> int:
        return len(self.buf) - self.pos


def encode_state_vector(clocks: dict[int, int]) -> bytes:
    """Yjs v1 state vector of ``{client id: clock}``."""
    parts = [encode_varuint(len(clocks))]
    for client, clock in sorted(clocks.items()):
        parts.append(encode_varuint(client))
        parts.append(encode_varuint(clock))
    return b"".join(parts)


def decode_state_vector(sv: bytes) -> dict[int, int]:
    """Decode a Yjs v1 state vector.

    Raises ProtocolError on truncated input, oversized varints or trailing bytes.
    A client listed twice keeps its highest clock.
    """
    r = _Reader(sv, "state vector")
    count = r.varuint()
    if count > r.left() // 2:
        raise ProtocolError(f"state vector announces {count} clients in {len(sv)} bytes")
    clocks: dict[int, int] = {}
    for _ in range(count):
        client = r.varuint()
        clock = r.varuint()
        clocks[client] = max(clock, clocks.get(client, 0))
    if r.left():
        raise ProtocolError(f"{r.left()} trailing bytes after the state vector")
    return clocks


class DeleteSet:
    """Deleted ranges per Yjs client id, accumulated from local transactions."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: dict[int, list[tuple[int, int]]] = {}

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def clear(self) -> None:
        self.ranges.clear()

    def add(self, encoded: bytes) -> None:
        """Add a Yjs v1 delete set (``TransactionEvent.delete_set``)."""
        r = _Reader(encoded, "delete set")
        for _ in range(r.varuint()):
            client = r.varuint()
            target = self.ranges.setdefault(client, [])
            for _ in range(r.varuint()):
                clock = r.varuint()
                target.append((clock, r.varuint()))

    def encode(self) -> bytes:
        """The Yjs v1 encoding, with overlapping and adjacent ranges merged."""
        parts = [encode_varuint(len(self.ranges))]
        for client, ranges in sorted(self.ranges.items()):
            merged: list[list[int]] = []
            for clock, length in sorted(ranges):
                if merged and clock <= merged[-1][0] + merged[-1][1]:
                    last = merged[-1]
                    last[1] = max(last[1], clock + length - last[0])
                else:
                    merged.append([clock, length])
            parts.append(encode_varuint(client))
            parts.append(encode_varuint(len(merged)))
            for clock, length in merged:
                parts.append(encode_varuint(clock))
                parts.append(encode_varuint(length))
        return b"".join(parts)
