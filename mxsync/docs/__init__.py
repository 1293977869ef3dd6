"""SyncedDoc: a ``pycrdt.Doc`` kept converged with every client that opens the same (room, name).

``async with client.open_doc(room_id, name) as sdoc:`` yields a SyncedDoc whose
``sdoc.doc`` is an ordinary ``pycrdt.Doc``. Local edits are sent, remote edits are
applied; the wire format is docs/PROTOCOL.md, section "Documents"
(the package ``mxsync/protocol/docs/``). This package owns the I/O around that protocol:
the local cache, batching, snapshots, loading and following a document.

Data path of a local edit: transaction observer (marks the document dirty) ->
writer task (at once when idle, at most ``batch_delay`` later in a burst) computes
the diff of this device's structs since the last batch
(``doc.get_update(baseline_sv)``) -> store (doc log and outbox, one SQLite
transaction) -> outbox -> homeserver. Remote events: sync loop -> ``room_events``
stream -> decode, check power level, validate -> apply in a transaction whose
origin is :data:`REMOTE`, which the observer ignores (no echo).

Invariants
----------
1. An edit is made (survives a crash) once the writer has stored it: in the doc
   log, and in the outbox when it is sent. The writer stores every edit at most
   ``batch_delay`` after it (plus one SQLite commit); ``await sdoc.persist()``
   waits for that, ``await sdoc.flush()`` until the homeserver has it.
2. At most one batch per document is in flight. While it is (or while the outbox
   waits out a rate limit or an outage), new edits are stored in the doc log and
   join the next batch, which is the diff since the last batch sent: 5,000 edits
   under a rate limit become a handful of events, and nothing is lost.
3. A batch holds only this device's structs (its Yjs client ids) and the
   deletions made by local transactions since the previous batch; remote content
   is never sent back. (After a restart that left deletions unsent, the first
   batch carries the document's whole delete set: correct, only larger.)
4. A remote update is applied only if it decodes, its sender may send it, it
   validates and pycrdt takes it; anything else is skipped and logged once
   (stated in full in :mod:`~mxsync.docs.replica`, which keeps it).
5. The position a cache resumes from, and the ``covers`` of a snapshot, come
   before every update the state does not hold yet (incomplete chunk sets,
   pending updates: yrs leaves pending structs out of ``get_update()``).
6. A snapshot is taken only when every local change it holds is in the outbox
   ahead of it (same lane), so that every change also travels as an update.
7. The cache (full state, the position it covers, this device's Yjs client id and
   the clocks already sent) is written with the outbox rows it depends on, at most
   every ``cache_interval`` seconds, on snapshot and on close. The client id is
   reused on the next open: every struct it ever made is in the cache or was
   never seen by anyone, so no clock is issued twice.

Modules, each owning its own state
----------------------------------
- :mod:`~mxsync.docs.replica`: the remote side as a pure state machine (the
  ``pycrdt.Doc``, power levels, seen ids, chunk sets, pending updates);
- :mod:`~mxsync.docs.local`: local change tracking (observer, local client ids,
  clocks sent and stored, unsent delete sets);
- :mod:`~mxsync.docs.writer`: batches, snapshots, pacing, outbox staging;
- :mod:`~mxsync.docs.loader`: cache restore, catch-up, cold open, declaration;
- :mod:`~mxsync.docs.coldscan`: where a cold open can start (the backward scan
  for a complete, valid snapshot and the branches it may lack; pure);
- :mod:`~mxsync.docs.cache`: the cache's tables and SQL;
- :mod:`~mxsync.docs.peers`: which devices have the document open, the
  to-device fan-out to them (never in an encrypted room);
- :mod:`~mxsync.docs.awareness`: ``SyncedDoc.awareness`` over to-device
  (coalesced, paced, expiring; never in the document);
- :mod:`~mxsync.docs.live`: local batches sent at once to the peers, ahead of
  the timeline, and the peers' applied;
- :mod:`~mxsync.docs.channel`: the three above for one open document;
- :mod:`~mxsync.docs.doc`: :class:`SyncedDoc`, the facade and lifecycle;
- :mod:`~mxsync.docs.compat`: :class:`MatrixCrdtDoc`, a document in a Matrix-CRDT
  room (its wire format, ``open_doc(room, compat="matrix-crdt")``).

The to-device channel (docs/PROTOCOL.md, section 4) is ephemeral: losing all of
it changes latency and cursors, never the document, which the timeline carries.
"""

from .compat import MatrixCrdtDoc as MatrixCrdtDoc
from .compat import MatrixCrdtStatistics as MatrixCrdtStatistics
from .doc import DocStatistics as DocStatistics
from .doc import SyncedDoc as SyncedDoc
from .doc import open_doc as open_doc
from .replica import REMOTE as REMOTE

__all__ = ["REMOTE", "DocStatistics", "MatrixCrdtDoc", "MatrixCrdtStatistics", "SyncedDoc",
           "open_doc"]
