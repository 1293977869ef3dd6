"""The whiteboard's data model: what it keeps in the room's pycrdt document.

Every stroke lives in one Yjs/pycrdt ``Doc`` (the room's SyncedDoc named
``whiteboard``), in two root types, written by the page's Yjs document (see
``web/board.js``, the same schema) and by Python through :class:`Board`::

    strokes   Map   stroke id -> {"author": "@alice:localhost",
                                  "color": "#e11d48",      # "#rrggbb"
                                  "width": 4,              # 1..64 board units
                                  "points": [x0, y0, x1, y1, ...],
                                  "t": 1700000000000}      # when it was drawn (ms)
    order     Array stroke ids, bottom to top (z-order)

Coordinates are whole numbers on a fixed board of :data:`BOARD_W` x
:data:`BOARD_H` units; each page scales the board to its window. A stroke is an
immutable JSON value, written once in one transaction together with its id in
``order``. (pycrdt hands numbers back as floats; :func:`Board.snapshot` turns
them back into ints.)

Operations, each one local transaction, hence one update in the room:

- **draw**: add the stroke to ``strokes`` and append its id to ``order``;
- **erase**: delete one stroke (anyone's) from both;
- **undo**: delete the caller's own most recent stroke still on the board;
- **clear**: delete every stroke. A stroke drawn concurrently elsewhere
  survives a clear, as it should: its author had not seen the clear.

Presence (who is here, where their pointer is) is not in the document: it
travels as Yjs awareness states (``{"user": {"id", "color"}, "cursor": [x, y]}``),
which expire by themselves, so an open page adds nothing to the document's
history. :func:`present_users` reads them.

The functions here are synchronous and do no I/O; call them on the event
loop's thread, where the SyncedDoc applies remote updates too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from pycrdt import Array, Doc, Map

__all__ = [
    "BOARD_H",
    "BOARD_W",
    "MAX_POINTS",
    "Board",
    "InvalidStroke",
    "present_users",
    "validate_stroke",
]

BOARD_W = 1600
BOARD_H = 900
MAX_POINTS = 4000  # (x, y) pairs per stroke: a long, slow scribble
MAX_WIDTH = 64

_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_STROKE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class InvalidStroke(ValueError):
    """A stroke sent by a page is malformed; it is refused, never stored."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidStroke(f"{what} must be an integer in {lo}..{hi}")
    return value


def validate_stroke(raw: Any) -> tuple[str, str, int, list[int]]:
    """Check a stroke sent by a page; return ``(id, color, width, points)``."""
    if not isinstance(raw, Mapping):
        raise InvalidStroke("a stroke is an object")
    sid, color, points = raw.get("id"), raw.get("color"), raw.get("points")
    if not isinstance(sid, str) or not _STROKE_ID.fullmatch(sid):
        raise InvalidStroke("id must be 1-64 letters, digits, '_' or '-'")
    if not isinstance(color, str) or not _COLOR.fullmatch(color):
        raise InvalidStroke("color must look like #rrggbb")
    width = _int(raw.get("width"), 1, MAX_WIDTH, "width")
    if not isinstance(points, list) or not points or len(points) % 2:
        raise InvalidStroke("points must be a non-empty flat list [x0, y0, x1, y1, ...]")
    if len(points) > 2 * MAX_POINTS:
        raise InvalidStroke(f"at most {MAX_POINTS} points per stroke")
    checked = [
        _int(v, 0, BOARD_W if i % 2 == 0 else BOARD_H, "a coordinate")
        for i, v in enumerate(points)
    ]
    return sid, color.lower(), width, checked


def _as_int(value: Any, default: int = 0) -> int:
    """A whole number read back from pycrdt (a float), or ``default``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return int(value)


class Board:
    """The whiteboard operations on a pycrdt ``Doc``, on behalf of ``user``."""

    def __init__(self, doc: Doc, user: str) -> None:
        self.doc = doc
        self.user = user
        self.strokes: Map = doc.get("strokes", type=Map)
        self.order: Array = doc.get("order", type=Array)

    # -- edits -----------------------------------------------------------------

    def draw(self, raw: Any, *, now_ms: int | None = None) -> str:
        """Add a stroke sent by a page; return its id. Raises InvalidStroke.

        Sending the same stroke twice (a page that reconnects and resends) is a
        no-op the second time.
        """
        sid, color, width, points = validate_stroke(raw)
        if sid in self.strokes:
            return sid
        stroke = {
            "author": self.user,
            "color": color,
            "width": width,
            "points": points,
            "t": _now_ms() if now_ms is None else now_ms,
        }
        with self.doc.transaction():
            self.strokes[sid] = stroke
            self.order.append(sid)
        return sid

    def erase(self, sid: Any) -> bool:
        """Delete one stroke, whoever drew it; False if it is not on the board."""
        if not isinstance(sid, str) or sid not in self.strokes:
            return False
        with self.doc.transaction():
            self._delete(sid)
        return True

    def undo(self) -> str | None:
        """Delete this user's most recent stroke still on the board; return its id."""
        ids = [sid for sid in self.order.to_py() or [] if isinstance(sid, str)]
        for sid in reversed(ids):
            stroke = self.strokes.get(sid)
            if isinstance(stroke, dict) and stroke.get("author") == self.user:
                with self.doc.transaction():
                    self._delete(sid)
                return sid
        return None

    def clear(self) -> int:
        """Delete every stroke; return how many there were."""
        n = len(self.strokes)
        with self.doc.transaction():
            for key in list(self.strokes.keys()):
                del self.strokes[key]
            if len(self.order):
                del self.order[0 : len(self.order)]
        return n

    def _delete(self, sid: str) -> None:
        if sid in self.strokes:
            del self.strokes[sid]
        ids = self.order.to_py() or []
        # A concurrent edit may have left the id twice; remove every copy.
        for i in reversed(range(len(ids))):
            if ids[i] == sid:
                del self.order[i]

    # -- reading ---------------------------------------------------------------

    def snapshot(self, present: list[str] | None = None) -> dict[str, Any]:
        """The board as plain JSON: strokes in z-order, and ``present`` (user ids)."""
        raw_strokes = self.strokes.to_py() or {}
        seen: set[str] = set()
        ordered: list[str] = []
        for sid in self.order.to_py() or []:
            if isinstance(sid, str) and sid in raw_strokes and sid not in seen:
                seen.add(sid)
                ordered.append(sid)
        # Strokes whose id never made it into ``order`` (another writer's bug)
        # are still shown, on top, oldest first.
        rest = sorted(
            (sid for sid in raw_strokes if sid not in seen),
            key=lambda s: (_as_int(_get(raw_strokes[s], "t")), s),
        )
        strokes = []
        for sid in ordered + rest:
            s = raw_strokes[sid]
            if not isinstance(s, dict):
                continue
            points = s.get("points")
            if not isinstance(points, list):
                continue
            strokes.append({
                "id": sid,
                "author": str(s.get("author", "")),
                "color": str(s.get("color", "#000000")),
                "width": _as_int(s.get("width"), 1),
                "points": [_as_int(v) for v in points],
            })
        return {"strokes": strokes, "presence": sorted(present or [])}


def present_users(states: Mapping[int, Any]) -> list[str]:
    """The user ids of awareness states (``{client id: state}``) that name one, once each."""
    users = set()
    for state in states.values():
        user = state.get("user") if isinstance(state, dict) else None
        uid = user.get("id") if isinstance(user, dict) else None
        if isinstance(uid, str) and uid:
            users.add(uid)
    return sorted(users)


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None
