"""Run every benchmark against a fresh embedded Synapse and print one table.

    python -m bench [--quick] [--json FILE] [--only docs,streams,rss]

Each benchmark module exposes ``async def run(hs, *, quick) -> dict[str, float]``
and measures its baselines in the same run on the same server, so that every
figure can be read as a ratio. The devserver keeps Synapse's default message
rate limits; the benchmarks lift them per user (admin API) for the "relaxed"
figures and keep them for the ``*_default`` ones.
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

from mxsync.devserver import DevServer

MODULES = {"docs": "bench.bench_docs", "streams": "bench.bench_streams", "rss": "bench.bench_rss"}

#: (figure, baseline, target ratio, higher is better)
RATIOS = [
    ("doc_edits_per_s", "doc_edits_per_s_naive", 100.0),
    ("doc_open_ms_replay", "doc_open_ms_snapshot", 10.0),
    ("readings_per_s", "readings_per_s_naive", 200.0),
    ("readings_per_s", "readings_per_s_mqtt", 1.0),
]


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name")), "?") if os.path.exists("/proc/cpuinfo")
        else "?",
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
    ratios = Table(title="ratios (same run)")
    for col in ("figure / baseline", "ratio", "target", "met"):
        ratios.add_column(col)
    for fig, base, target in RATIOS:
        if fig in results and base in results and results[base]:
            r = results[fig] / results[base]
            ratios.add_row(f"{fig} / {base}", f"{r:,.1f}x", f"{target:g}x",
                           "yes" if r >= target else "NO")
    console = Console()
    console.print(table)
    console.print(ratios)


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
    started = time.monotonic()
    results = anyio.run(run_all, selected, args.quick, backend="asyncio")
    results["bench_seconds"] = round(time.monotonic() - started, 1)
    print_table(results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**results, "machine": machine(), "quick": args.quick}, fh, indent=2,
                      sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
