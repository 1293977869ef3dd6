"""Run every benchmark against a fresh embedded Synapse and print one table.

    python -m bench [--quick] [--json FILE] [--only docs,streams,rss,federation,e2ee,peers]

Each benchmark module exposes ``async def run(hs, *, quick) -> dict[str, float]``
and measures its baselines in the same run on the same server, so that every
figure can be read as a ratio. The devserver keeps Synapse's default message
rate limits; the benchmarks lift them per user (admin API) for the "relaxed"
figures and keep them for the ``*_default`` ones.

Prints every figure, then the targets of issue #6 (ratios and bounds, same run),
then the peers table (mxsync next to Matrix-CRDT, issue #18) when it ran.
``--json`` writes every figure as a number, with the machine, the load average
before and after, and the date. A full run exits 1 if a required key is missing.
Results and method: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import anyio

from mxsync.dev import DevServer

MODULES = {"docs": "bench.bench_docs", "streams": "bench.bench_streams", "rss": "bench.bench_rss",
           "federation": "bench.bench_federation", "e2ee": "bench.bench_e2ee",
           "peers": "bench.bench_peers", "gateway": "bench.bench_gateway",
           "history": "bench.bench_history", "live": "bench.bench_live",
           "fleet": "bench.bench_fleet", "fleet_commands": "bench.bench_fleet_commands"}

#: Keys every full run writes, each a number (issue #6).
REQUIRED = (
    "doc_edits_per_s", "doc_edits_per_s_naive", "doc_latency_p50_ms", "doc_latency_p99_ms",
    "doc_bytes_per_edit", "doc_open_ms_snapshot", "doc_open_ms_replay", "readings_per_s",
    "readings_per_s_naive", "readings_per_s_mqtt", "bytes_per_reading", "client_rss_mb",
    # Issue #12: convergence after a federation heal, and the gap repair's cost.
    "fed_converge_s_reset", "fed_converge_s_noreset", "fed_gap_events_fetched_per_gap",
)

#: (figure, baseline, target ratio or None): figure / baseline, higher is better.
RATIOS: list[tuple[str, str, float | None]] = [
    ("doc_edits_per_s", "doc_edits_per_s_naive", 100.0),
    ("doc_open_ms_replay", "doc_open_ms_snapshot", 10.0),
    ("readings_per_s", "readings_per_s_naive", 200.0),
    ("readings_per_s", "readings_per_s_mqtt", 1.0),
    # End-to-end encryption against the same workload in cleartext (issue #15).
    ("e2ee_doc_edits_per_s", "e2ee_doc_edits_per_s_cleartext", 0.5),
    ("e2ee_readings_per_s", "e2ee_readings_per_s_cleartext", 0.5),
    # Under Synapse's default message limit (no target: for the record).
    ("doc_edits_per_s_default", "doc_edits_per_s_naive_default", None),
    ("doc_edits_per_s_default", "doc_edits_per_s_naive_default_ceiling", None),
    ("readings_per_s_default", "readings_per_s_naive_default_ceiling", None),
    # History by reading time (issue #13): the scan by server time over the index.
    ("history_scan_wide_ms", "history_index_repeat_ms", None),
    ("history_scan_wide_ms", "history_index_first_ms", None),
    # Issue #16: timeline-only latency over the live channel's (the speed-up), same run.
    ("live_latency_p50_ms_2_timeline", "live_latency_p50_ms_2", None),
    ("live_latency_p50_ms_5_timeline", "live_latency_p50_ms_5", None),
    # The MQTT bridge end to end against Mosquitto alone (issue #17; for the record).
    ("bridge_readings_per_s", "bridge_readings_per_s_mqtt", None),
]

#: (figure, upper bound): absolute targets.
LIMITS = [
    ("doc_latency_p50_ms", 100.0),
    ("bytes_per_reading", 4.0),
    # Issue #16: typing at 10 chars/s under the default rc_message, live channel.
    ("live_latency_p50_ms_2", 200.0),
    ("live_latency_p99_ms_2", 1000.0),
    ("live_latency_p50_ms_5", 200.0),
    ("live_latency_p99_ms_5", 1000.0),
]


def _first(path: str, prefix: str) -> str:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        from importlib.metadata import version

        synapse = version("matrix-synapse")
    except Exception:  # informational only
        synapse = "?"
    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "ram_gb": round(int(mem_kb) / 1024**2, 1) if mem_kb.isdigit() else "?",
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "synapse": synapse,
        "loadavg": os.getloadavg(),
    }


async def run_all(selected: list[str], quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mxsync-bench-") as state:
        async with DevServer(state, rate_limits="default") as hs:
            for name in selected:
                module = importlib.import_module(MODULES[name])
                started = time.monotonic()
                figures = await module.run(hs, quick=quick)
                print(f"[{name}] done in {time.monotonic() - started:.0f} s", file=sys.stderr)
                results.update(figures)
    return results


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mxsync benchmarks")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in sorted(results.items()):
        if isinstance(value, (int, float)):
            table.add_row(key, f"{value:,.2f}")
    targets = Table(title="targets (same run)")
    for col in ("figure", "value", "target", "met"):
        targets.add_column(col)
    for fig, base, target in RATIOS:
        if fig in results and base in results and results[base]:
            r = results[fig] / results[base]
            targets.add_row(f"{fig} / {base}", f"{r:,.1f}x",
                            "-" if target is None else f">= {target:g}x",
                            "-" if target is None else "yes" if r >= target else "NO")
    for fig, bound in LIMITS:
        if fig in results:
            v = results[fig]
            targets.add_row(fig, f"{v:,.2f}", f"<= {bound:g}", "yes" if v <= bound else "NO")
    console = Console()
    console.print(table)
    console.print(targets)
    from bench.bench_peers import rows

    peer_rows = rows(results)
    if peer_rows:
        peers = Table(title="peers: mxsync and Matrix-CRDT 0.2.0 (same server, same run)")
        for col in ("row", "mxsync", "Matrix-CRDT", "mxsync ahead by"):
            peers.add_column(col, justify="left" if col == "row" else "right")
        for label, mx, mc, ratio in peer_rows:
            peers.add_row(label, f"{mx:,.1f}", "stalls" if mc != mc else f"{mc:,.1f}",
                          "-" if ratio != ratio else f"{ratio:,.2f}x")
        console.print(peers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under 3 minutes")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--only", default=",".join(MODULES),
                        help=f"comma-separated subset of {','.join(MODULES)}")
    args = parser.parse_args(argv)
    selected = [s for s in args.only.split(",") if s]
    for s in selected:
        if s not in MODULES:
            parser.error(f"unknown benchmark {s!r}")
    if "streams" in selected:
        from bench.bench_streams import MOSQUITTO

        if not os.access(MOSQUITTO, os.X_OK):
            parser.error(f"{MOSQUITTO} is missing (the MQTT baseline): run "
                         "scripts/ensure-system-packages, as `make bench` does")
    started = time.monotonic()
    load_before = os.getloadavg()
    results = anyio.run(run_all, selected, args.quick, backend="asyncio")
    results["bench_seconds"] = round(time.monotonic() - started, 1)
    print_table(results)
    missing = []
    if set(selected) == set(MODULES):
        missing = [k for k in REQUIRED
                   if not isinstance(results.get(k), (int, float)) or results[k] != results[k]]
        if missing:
            print(f"missing or not a number: {', '.join(missing)}", file=sys.stderr)
    if args.json:
        info = {**machine(), "loadavg_before": load_before}
        info["loadavg_after"] = info.pop("loadavg")
        with open(args.json, "w") as fh:
            json.dump({**results, "machine": info, "quick": args.quick,
                       "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, fh, indent=2,
                      sort_keys=True)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
