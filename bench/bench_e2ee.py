"""Encrypted against cleartext rooms: the same document and readings workloads,
one after the other on the same server in the same run (issue #15).

    python -m bench --only e2ee [--quick]

Both rooms are created the same way but for ``encrypted=True``; users are
relaxed (no message rate limit), so the figures measure encryption's own cost:
megolm per event, key sharing (to-device) once per session, and the smaller
budget of an encrypted event (more, smaller events for the same data).
"""

from __future__ import annotations

import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

from mxsync.dev import DevServer

from .bench_docs import _users, say, throughput
from .bench_streams import end_to_end


async def run(hs: DevServer, *, quick: bool) -> dict[str, float]:
    edits = 2_000 if quick else 10_000
    readings = 100_000 if quick else 500_000
    out: dict[str, float] = {}
    # Alternating, twice each, best of two: the first runs on a cold server and
    # a busy machine would otherwise decide the ratio.
    for rep, encrypted in ((0, False), (0, True), (1, False), (1, True)):
        suffix = "" if encrypted else "_cleartext"
        async with AsyncExitStack() as stack:
            w, r = await _users(hs, stack, 2, f"e2e{rep}{int(encrypted)}")
            docs = await throughput(w, r, edits, encrypted=encrypted)
        with tempfile.TemporaryDirectory(prefix="mxsync-e2ee-") as tmp:
            per_s, per_reading = await end_to_end(hs, Path(tmp), readings, encrypted=encrypted)
        say(f"{'encrypted' if encrypted else 'cleartext'}: {docs['doc_edits_per_s']:.0f} "
            f"edits/s, {per_s:.0f} readings/s")
        best = {"e2ee_doc_edits_per_s": docs["doc_edits_per_s"], "e2ee_readings_per_s": per_s}
        for key, value in best.items():
            out[key + suffix] = max(out.get(key + suffix, 0.0), value)
        out["e2ee_doc_bytes_per_edit" + suffix] = docs["doc_bytes_per_edit"]
        out["e2ee_bytes_per_reading" + suffix] = per_reading
    return out
