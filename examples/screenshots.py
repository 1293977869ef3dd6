"""``python -m examples.screenshots``: the README's screenshots, from the real running demo.

Starts ``mxsync demo`` on a fresh state dir (so that the sensors backfill an
hour of history), draws a small sketch on alice's and bob's whiteboard pages
with the mouse in headless Chromium, waits until bob's page has every stroke,
and saves ``whiteboard.png`` (alice's page) and ``dashboard.png`` into
``--out`` (default ``docs/screenshots``). Stops the demo with Ctrl-C (SIGINT)
at the end.

Needs Debian's chromium (``/usr/bin/chromium``) and the playwright package
(never ``playwright install``).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
Point = tuple[float, float]


def _circle(cx: float, cy: float, r: float, n: int = 40, turns: float = 1.0) -> list[Point]:
    return [(cx + r * math.cos(2 * math.pi * turns * i / n),
             cy + r * math.sin(2 * math.pi * turns * i / n)) for i in range(n + 1)]


def _poly(*pts: Point) -> list[Point]:
    out: list[Point] = []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        steps = max(2, int(math.hypot(x1 - x0, y1 - y0) / 20))
        out += [(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps) for i in range(steps)]
    out.append(pts[-1])
    return out


def _wave(x0: float, x1: float, y: float, amp: float, period: float) -> list[Point]:
    return [(x, y + amp * math.sin(2 * math.pi * (x - x0) / period))
            for x in range(int(x0), int(x1) + 1, 12)]


def _cloud(cx: float, cy: float) -> list[Point]:
    pts: list[Point] = []
    for dx, r in ((-70, 38), (-20, 55), (40, 45), (85, 30)):
        arc = [(cx + dx + r * math.cos(a), cy - r * 0.55 * abs(math.sin(a)))
               for a in (math.pi - math.pi * i / 14 for i in range(15))]
        pts += arc
    return pts + _poly(pts[-1], (cx - 108, cy))


# (colour, width, points) per stroke: alice draws the house and the ground, bob
# the sun, a tree and a cloud.
ALICE: list[tuple[str, int, list[Point]]] = [
    ("#16a34a", 8, _wave(60, 1540, 760, 10, 260)),
    ("#111827", 4, _poly((520, 750), (520, 480), (880, 480), (880, 750))),
    ("#e11d48", 8, _poly((490, 500), (700, 330), (910, 500))),
    ("#111827", 4, _poly((660, 750), (660, 610), (740, 610), (740, 750))),
    ("#2563eb", 4, _poly((560, 530), (630, 530), (630, 590), (560, 590), (560, 530))),
    ("#2563eb", 4, _poly((770, 530), (840, 530), (840, 590), (770, 590), (770, 530))),
]
BOB: list[tuple[str, int, list[Point]]] = [
    ("#eab308", 8, _circle(1260, 190, 70)),
    *[("#eab308", 4, _poly((1260 + 95 * math.cos(a), 190 + 95 * math.sin(a)),
                           (1260 + 135 * math.cos(a), 190 + 135 * math.sin(a))))
      for a in (2 * math.pi * k / 8 + 0.2 for k in range(8))],
    ("#f97316", 8, _poly((1150, 750), (1150, 560))),
    ("#16a34a", 8, _circle(1150, 500, 80, n=70, turns=2.2)),
    ("#0ea5e9", 4, _cloud(330, 200)),
]


async def _draw(page: Any, strokes: list[tuple[str, int, list[Point]]]) -> None:
    await page.bring_to_front()
    rect = await page.evaluate(
        "(() => { const r = document.getElementById('board').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()")
    left, top, w, h = rect

    def client(p: Point) -> Point:
        return left + p[0] / 1600 * w, top + p[1] / 900 * h

    for color, width, points in strokes:
        await page.evaluate(f"whiteboard.setColor('{color}'); whiteboard.setWidth({width})")
        await page.mouse.move(*client(points[0]))
        await page.mouse.down()
        for p in points[1:]:
            await page.mouse.move(*client(p))
        await page.mouse.up()


def _start_demo(state_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mxsync", "demo", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        print(line, end="", flush=True)
        if m := re.match(r"(whiteboard \(\w+\)|dashboard \(\w+\))\s+(http://\S+)", line):
            urls[m[1]] = m[2]
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    if len(urls) != 3:
        proc.send_signal(signal.SIGINT)
        raise SystemExit("the demo did not start")
    return proc, urls


async def _shoot(urls: dict[str, str], out: Path, settle: float) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        view: Any = {"width": 1280, "height": 800}
        alice = await (await browser.new_context(viewport=view)).new_page()
        bob = await (await browser.new_context(viewport=view)).new_page()
        await alice.goto(urls["whiteboard (alice)"])
        await bob.goto(urls["whiteboard (bob)"])
        for page in (alice, bob):
            # Present first: the presence chips settle the toolbar's layout. (Each
            # page shows the other user once awareness crosses gateways over Matrix.)
            await page.wait_for_function(
                "window.whiteboard && whiteboard.connected() && whiteboard.synced()"
                " && whiteboard.presence().length >= 1", timeout=60_000)
        await alice.evaluate("whiteboard.clear()")
        await bob.wait_for_function("whiteboard.strokes().length === 0", timeout=60_000)
        await _draw(alice, ALICE)
        await _draw(bob, BOB)
        total = len(ALICE) + len(BOB)
        for page in (alice, bob):
            await page.wait_for_function(
                f"whiteboard.strokes().length === {total}",
                timeout=60_000)
        await alice.bring_to_front()
        await alice.evaluate("whiteboard.setColor('#e11d48'); whiteboard.setWidth(4)")
        await alice.mouse.move(0, 0)
        await alice.screenshot(path=str(out / "whiteboard.png"))

        # Short viewport: the full-page screenshot is as tall as the content.
        dash_view: Any = {"width": 1280, "height": 600}
        dash = await (await browser.new_context(viewport=dash_view)).new_page()
        await dash.goto(urls["dashboard (ops)"])
        await dash.wait_for_function("dashboard.snapshots() > 0", timeout=60_000)
        await asyncio.sleep(settle)  # a little live data after the history
        await dash.screenshot(path=str(out / "dashboard.png"), full_page=True)
        await browser.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.screenshots",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds of live readings before the dashboard's screenshot")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mxsync-screens-") as tmp:
        proc, urls = _start_demo(Path(tmp) / "demo")
        try:
            asyncio.run(_shoot(urls, args.out, args.settle))
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=120)
            print(out, end="")
    print(f"saved {args.out / 'whiteboard.png'} and {args.out / 'dashboard.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
