"""``mxsync doc``: look at synced documents from the command line.

    mxsync doc cat ROOM [--name N] [--type ROOT=KIND]   the content as JSON
    mxsync doc stats ROOM [--json]                      events, snapshots, bytes per document

``cat`` opens the document read-only (it never declares, sends or snapshots; it
does keep the client's local cache, so the next ``cat`` only reads what is new)
and shows a progress bar on a terminal while loading. ``stats`` reads the room's
whole history of document events.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

import pycrdt

from ..errors import ConfigError, ProtocolError
from ..protocol import docs as proto
from ..protocol.types import DOC, DOC_SNAPSHOT, DOC_UPDATE
from .common import add_login_args, client_from_args, run_command

__all__ = ["add_parser", "cmd_cat", "cmd_stats", "declared_docs", "doc_to_json",
           "room_doc_stats", "stats_table"]

_KINDS = {"text": pycrdt.Text, "map": pycrdt.Map, "array": pycrdt.Array,
          "xml": pycrdt.XmlFragment}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doc", help="synced CRDT documents: print one, show a room's statistics")
    actions = p.add_subparsers(dest="doc_command", metavar="ACTION", required=True)
    cat = actions.add_parser("cat", help="print a document's content as JSON")
    cat.add_argument("room", help="room id (!...)")
    cat.add_argument("--name", default=None,
                     help="document name (default: the room's only document; several "
                     "are listed)")
    cat.add_argument("--type", action="append", default=[], metavar="ROOT=KIND",
                     help="kind of a root: text, map, array or xml (guessed when not given)")
    add_login_args(cat)
    cat.set_defaults(func=cmd_cat)
    stats = actions.add_parser("stats", help="events, snapshots and bytes of each document")
    stats.add_argument("room", help="room id (!...)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_login_args(stats)
    stats.set_defaults(func=cmd_stats)


# ---------------------------------------------------------------------- content


def _plain(value: Any) -> Any:
    """Yjs numbers arrive as floats; show the integral ones as integers."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _root_value(state: bytes, key: str, kind: str) -> Any:
    scratch: pycrdt.Doc[Any] = pycrdt.Doc()
    scratch.apply_update(state)
    root = scratch.get(key, type=_KINDS[kind])
    if kind in ("text", "xml"):
        return str(root)
    return _plain(root.to_py())


def _guess(state: bytes, key: str) -> Any:
    # A root that only arrived through an update has no type yet; Yjs leaves that
    # to the reader. Map entries show as a non-empty map; a text's characters as a
    # non-empty text; what an array read refuses is XML.
    as_map = _root_value(state, key, "map")
    if as_map:
        return as_map
    try:
        as_array = _root_value(state, key, "array")
    except ValueError:
        return _root_value(state, key, "xml")
    as_text = _root_value(state, key, "text")
    return as_text if as_text else as_array


def doc_to_json(doc: pycrdt.Doc[Any], kinds: dict[str, str] | None = None) -> dict[str, Any]:
    """Every root of ``doc`` as plain JSON values, kinds given or guessed."""
    kinds = kinds or {}
    state = doc.get_update()
    return {
        key: _root_value(state, key, kinds[key]) if key in kinds else _guess(state, key)
        for key in sorted(doc.keys())
    }


def _parse_kinds(items: list[str]) -> dict[str, str]:
    kinds = {}
    for item in items:
        key, sep, kind = item.partition("=")
        if not sep or kind not in _KINDS:
            raise ConfigError(f"--type wants ROOT=KIND with KIND one of {', '.join(_KINDS)}")
        kinds[key] = kind
    return kinds


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    console=Console(stderr=True), transient=True, disable=not enabled)


async def declared_docs(client: Any, room_id: str) -> list[str]:
    """The names of the documents declared in the room, sorted."""
    return sorted(ev.state_key for ev in await client.room_state(room_id)
                  if ev.type == DOC and ev.state_key and ev.content)


async def _pick_name(client: Any, room_id: str, name: str | None) -> str:
    """``name``, else the room's only document; else an error listing them."""
    names = await declared_docs(client, room_id)
    if name is not None and (name in names or not names):
        return name
    if name is None and len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError(f"no document is declared in {room_id}")
    listing = ", ".join(names)
    if name is None:
        raise ConfigError(f"{room_id} has several documents: {listing}; pick one with --name")
    raise ConfigError(f"document {name!r} is not declared in {room_id}; declared there: "
                      f"{listing}")


def cmd_cat(args: argparse.Namespace) -> int:
    async def main() -> None:
        kinds = _parse_kinds(args.type)
        async with client_from_args(args) as client:
            name = await _pick_name(client, args.room, args.name)
            with _progress(sys.stderr.isatty()) as progress:
                task = progress.add_task(f"loading {name}", total=None)

                def on_progress(done: int, total: int | None) -> None:
                    progress.update(task, completed=done, total=total)

                async with client.open_doc(args.room, name, on_progress=on_progress,
                                           read_only=True) as sdoc:
                    await sdoc.wait_synced()
                    content = doc_to_json(sdoc.doc, kinds)
        print(json.dumps(content, ensure_ascii=False, indent=2))

    return run_command("mxsync doc cat", main)


# ------------------------------------------------------------------------ stats


def _new_stats() -> dict[str, Any]:
    return {
        "declared": False,
        "update_events": 0,
        "update_chunk_events": 0,
        "update_payload_bytes": 0,
        "snapshot_events": 0,
        "snapshots": 0,
        "content_bytes": 0,
        "malformed_events": 0,
        "updates_since_snapshot": 0,
        "last_snapshot_state_bytes": None,
        "senders": set(),
    }


async def room_doc_stats(client: Any, room_id: str,
                         on_progress: Any = None) -> dict[str, dict[str, Any]]:
    """Per document name: events, chunks, snapshots and bytes in the room's history."""
    docs: dict[str, dict[str, Any]] = {}
    token: str | None = None
    read = 0
    snapshot_seen: set[str] = set()
    while True:
        page = await client.messages(room_id, token, direction="b", limit=1000,
                                     types=[DOC_UPDATE, DOC_SNAPSHOT])
        for ev in page.events:  # newest first
            name = proto.doc_of(ev.content)
            if not isinstance(name, str):
                continue
            st = docs.setdefault(name, _new_stats())
            st["content_bytes"] += proto.content_size(ev.content)
            st["senders"].add(ev.sender)
            try:
                decoded = proto.decode_doc_event(ev.type, ev.content)
            except ProtocolError:
                st["malformed_events"] += 1
                continue
            if isinstance(decoded, proto.DocChunk):
                last = decoded.chunk.index == decoded.chunk.count - 1
                if decoded.kind == "update":
                    st["update_events"] += 1
                    st["update_chunk_events"] += 1
                    st["update_payload_bytes"] += len(decoded.data)
                    if last and name not in snapshot_seen:
                        st["updates_since_snapshot"] += 1
                else:
                    st["snapshot_events"] += 1
                    if last:
                        st["snapshots"] += 1
                        if name not in snapshot_seen:
                            snapshot_seen.add(name)
                            st["last_snapshot_state_bytes"] = decoded.chunk.size
            elif isinstance(decoded, proto.DocUpdate):
                st["update_events"] += 1
                st["update_payload_bytes"] += len(decoded.update)
                if name not in snapshot_seen:
                    st["updates_since_snapshot"] += 1
            elif isinstance(decoded, proto.DocSnapshot):
                st["snapshot_events"] += 1
                st["snapshots"] += 1
                if name not in snapshot_seen:
                    snapshot_seen.add(name)
                    st["last_snapshot_state_bytes"] = len(decoded.state)
        read += len(page.events)
        if on_progress is not None:
            on_progress(read)
        if not page.events or page.end is None or page.end == token:
            break
        token = page.end
    for name in await declared_docs(client, room_id):
        docs.setdefault(name, _new_stats())["declared"] = True
    for st in docs.values():
        st["senders"] = len(st["senders"])
    return docs


#: The rows of the ``stats`` table: one statistic a row, one document a column,
#: so that it fits 100 columns whatever the number of statistics.
_STAT_ROWS: Final = (
    ("declared", "declared"), ("update events", "update_events"),
    ("  of which chunks", "update_chunk_events"), ("update bytes", "update_payload_bytes"),
    ("snapshots", "snapshots"), ("snapshot events", "snapshot_events"),
    ("updates since snapshot", "updates_since_snapshot"),
    ("last snapshot bytes", "last_snapshot_state_bytes"),
    ("content bytes", "content_bytes"), ("malformed", "malformed_events"),
    ("senders", "senders"),
)


def stats_table(room_id: str, docs: dict[str, dict[str, Any]]) -> Any:
    """The rich Table of ``stats``: a row per statistic, a column per document."""
    from rich.table import Table

    table = Table(title=f"documents in {room_id}", title_justify="left")
    table.add_column("")
    names = sorted(docs)
    for name in names:
        table.add_column(name, justify="right", overflow="fold")
    for title, key in _STAT_ROWS:
        table.add_row(title, *[
            ("yes" if docs[n][key] else "no") if key == "declared"
            else ("-" if docs[n][key] is None else f"{docs[n][key]:,}")
            for n in names
        ])
    return table


def cmd_stats(args: argparse.Namespace) -> int:
    async def main() -> None:
        async with client_from_args(args) as client:
            with _progress(sys.stderr.isatty() and not args.json) as progress:
                task = progress.add_task("reading history", total=None)
                docs = await room_doc_stats(
                    client, args.room, lambda n: progress.update(task, completed=n)
                )
        if args.json:
            print(json.dumps(docs, indent=2, sort_keys=True))
        elif not docs:
            print(f"no documents in {args.room}")
        else:
            from rich.console import Console

            Console().print(stats_table(args.room, docs))

    return run_command("mxsync doc stats", main)
