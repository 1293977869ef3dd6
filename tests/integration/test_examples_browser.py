"""The example web apps in a real browser (headless Chromium), against a real Synapse.

- Whiteboard (a Yjs app: y-websocket to the gateway in its server): alice's and
  bob's pages, each served by its own whiteboard server and client; what one
  draws, undoes, erases or clears shows on the other (the app's state and the
  canvas pixels); two pages of one server see each other's cursor (awareness)
  and see it go; a Python client sees a page's stroke, and two idle pages add
  no update bytes to the document in a minute.
- Dashboard: a reading published during the test shows on the page with its
  unit, the last hour comes from the room's history on open, and a device
  stopped during the test turns offline: a publisher closed in the test, and
  the sensor example run as a process and stopped with Ctrl-C (SIGINT).

Chromium is Debian's (``apt-get install chromium chromium-driver``), driven by
Playwright from PyPI with ``executable_path``; ``playwright install`` is never
needed. Without /usr/bin/chromium these tests are skipped, saying so.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # ``examples`` is a folder of the checkout, not installed
    sys.path.insert(0, str(REPO))

from examples.iot_sensor.dashboard import run_dashboard  # noqa: E402
from examples.whiteboard.model import Board  # noqa: E402
from examples.whiteboard.server import DOC_NAME, run_whiteboard  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(240),
    # In CI the browser is installed by .ci/run (make test): a missing one is a
    # failure there, not a reason to skip.
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="needs Debian's chromium at /usr/bin/chromium "
                              "(apt-get install chromium chromium-driver)"),
]

WAIT_MS = 30_000


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM),
                                               args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        # Playwright's driver pipe is closed when collected: collect it while the
        # event loop still runs, not at interpreter exit (an unraisable warning).
        gc.collect()
        await anyio.lowlevel.checkpoint()


async def open_page(browser: Any, url: str) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(url)
    return page


async def draw(page: Any, points: list[tuple[int, int]]) -> None:
    """Drag the mouse through board points, as a user draws."""
    # Input reaches a background tab late: bring the page to the front first.
    await page.bring_to_front()
    x, y = await page.evaluate("([x, y]) => whiteboard.clientPoint(x, y)", list(points[0]))
    await page.mouse.move(x, y)
    await page.mouse.down()
    for p in points[1:]:
        x, y = await page.evaluate("([x, y]) => whiteboard.clientPoint(x, y)", list(p))
        await page.mouse.move(x, y, steps=5)
    await page.mouse.up()


async def strokes(page: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await page.evaluate("whiteboard.strokes()")
    return result


async def cursor_settled(viewer: Any, user: str, point: tuple[int, int]) -> None:
    """Wait until ``viewer`` draws ``user``'s cursor where their mouse stopped
    (``point``, board coordinates), or not at all. Cursors travel as awareness,
    paced apart from the strokes (a few sends a second): a page can hold a
    stroke while it still draws the author's cursor at a point the mouse passed,
    on top of the stroke's pixels."""
    await viewer.wait_for_function(
        "([u, x, y]) => whiteboard.cursors().every(c => c.user !== u"
        " || (Math.abs(c.x - x) < 20 && Math.abs(c.y - y) < 20))",
        arg=[user, *point], timeout=WAIT_MS)


def is_colour(pixel: list[int], rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(p - c) <= tolerance for p, c in zip(pixel[:3], rgb, strict=True))


RED = (0xE1, 0x1D, 0x48)
BLUE = (0x25, 0x63, 0xEB)
WHITE = (255, 255, 255)


async def test_whiteboard_pages_share_strokes_undo_erase_clear_and_presence(
    make_user, make_client
):
    a_creds = await make_user("alice", relaxed=True)
    b_creds = await make_user("bob", relaxed=True)
    alice = await make_client(a_creds)
    bob = await make_client(b_creds)
    room = await alice.create_room("whiteboard", invite=[bob.user_id])

    async with anyio.create_task_group() as tg, chromium() as browser:
        a_url = await tg.start(lambda task_status: run_whiteboard(alice, room,
                                                                  task_status=task_status))
        b_url = await tg.start(lambda task_status: run_whiteboard(bob, room,
                                                                  task_status=task_status))
        a_page = await open_page(browser, a_url)
        b_page = await open_page(browser, b_url)
        for page, me in ((a_page, alice.user_id), (b_page, bob.user_id)):
            await wait_ready(page)
            assert await page.evaluate("whiteboard.me()") == me
            # Presence (awareness): each page shows its own user. Across servers
            # awareness travels over Matrix (issue 16b), tested there.
            await page.wait_for_function("u => whiteboard.presence().includes(u)", arg=me,
                                         timeout=WAIT_MS)
        assert await a_page.locator("#presence li").count() >= 1

        # Alice draws a red stroke; it appears on Bob's page, point for point.
        await a_page.evaluate("whiteboard.setColor('#e11d48')")
        line = [(200, 200), (400, 300), (600, 260), (800, 420)]
        await draw(a_page, line)
        await b_page.wait_for_function("whiteboard.strokes().length === 1", timeout=WAIT_MS)
        (a_stroke,) = await strokes(a_page)
        (b_stroke,) = await strokes(b_page)
        assert b_stroke == a_stroke
        assert b_stroke["author"] == alice.user_id
        assert b_stroke["color"] == "#e11d48"
        assert b_stroke["points"][:2] == [200, 200] and b_stroke["points"][-2:] == [800, 420]
        assert all(isinstance(v, int) for v in b_stroke["points"])
        # ... and on Bob's canvas: red where the stroke runs, white elsewhere. Not
        # at its end: Alice's cursor (awareness over Matrix) is drawn there, once
        # it got there (CI once read her cursor at the stroke's start).
        await cursor_settled(b_page, alice.user_id, line[-1])
        assert is_colour(await b_page.evaluate("whiteboard.pixel(200, 200)"), RED)
        assert is_colour(await b_page.evaluate("whiteboard.pixel(300, 250)"), RED)
        assert is_colour(await b_page.evaluate("whiteboard.pixel(700, 340)"), RED)
        assert is_colour(await b_page.evaluate("whiteboard.pixel(1200, 700)"), WHITE)

        # Bob draws a blue stroke below it; Alice sees it, on top in z-order.
        await b_page.evaluate("whiteboard.setColor('#2563eb'); whiteboard.setWidth(8)")
        await draw(b_page, [(300, 600), (900, 650)])
        await a_page.wait_for_function("whiteboard.strokes().length === 2", timeout=WAIT_MS)
        await cursor_settled(a_page, bob.user_id, (900, 650))
        a_ids = [s["author"] for s in await strokes(a_page)]
        assert a_ids == [alice.user_id, bob.user_id]
        assert is_colour(await a_page.evaluate("whiteboard.pixel(600, 625)"), BLUE)

        # Undo on Alice's page takes back her own stroke only, for both pages.
        await a_page.click("#undo")
        for page in (a_page, b_page):
            await page.wait_for_function(
                "me => whiteboard.strokes().length === 1"
                " && whiteboard.strokes()[0].author !== me", arg=alice.user_id, timeout=WAIT_MS)
        assert is_colour(await b_page.evaluate("whiteboard.pixel(200, 200)"), WHITE)

        # Alice erases Bob's stroke with the eraser.
        await a_page.evaluate("whiteboard.setTool('eraser')")
        await draw(a_page, [(600, 560), (600, 700)])
        await b_page.wait_for_function("whiteboard.strokes().length === 0", timeout=WAIT_MS)
        await cursor_settled(b_page, alice.user_id, (600, 700))
        assert is_colour(await b_page.evaluate("whiteboard.pixel(600, 625)"), WHITE)

        # Bob draws twice, Alice clears (two clicks: the button asks first).
        await b_page.evaluate("whiteboard.setColor('#16a34a')")
        await draw(b_page, [(100, 100), (300, 120)])
        await draw(b_page, [(100, 800), (300, 820)])
        await a_page.wait_for_function("whiteboard.strokes().length === 2", timeout=WAIT_MS)
        await a_page.bring_to_front()
        await a_page.click("#clear")
        await a_page.click("#clear")
        await b_page.wait_for_function("whiteboard.strokes().length === 0", timeout=WAIT_MS)

        # A second page of Alice's: each sees the other's cursor (awareness
        # through the gateway), which adds nothing to the document.
        before = await a_page.evaluate("whiteboard.stateBytes()")
        a2_page = await open_page(browser, a_url)
        await wait_ready(a2_page)
        await a2_page.bring_to_front()
        x, y = await a2_page.evaluate("whiteboard.clientPoint(700, 400)")
        await a2_page.mouse.move(x, y, steps=3)
        await a_page.wait_for_function(
            "whiteboard.cursors().some(c => Math.abs(c.x - 700) <= 2 && Math.abs(c.y - 400) <= 2)",
            timeout=WAIT_MS)
        assert await a_page.evaluate("whiteboard.stateBytes()") == before
        # The page closes: its cursor goes (the gateway removes its state).
        await a2_page.close()
        await a_page.wait_for_function("whiteboard.cursors().length === 0", timeout=WAIT_MS)
        assert a_page.errors == [] and b_page.errors == [] and a2_page.errors == []
        tg.cancel_scope.cancel()


async def wait_ready(page: Any) -> None:
    await page.wait_for_function(
        "window.whiteboard && whiteboard.connected() && whiteboard.synced()", timeout=WAIT_MS)


async def _stats(url: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(url + "api/stats") as resp:
        result: dict[str, Any] = await resp.json()
    return result


#: The issue's requirement: two pages merely open for a minute.
IDLE_SECONDS = 60


@pytest.mark.timeout(240)
async def test_whiteboard_stroke_reaches_python_and_idle_pages_add_nothing_to_the_doc(
    make_user, make_client
):
    alice = await make_client(await make_user("alice", relaxed=True))
    bob = await make_client(await make_user("bob", relaxed=True))
    carol = await make_client(await make_user("carol", relaxed=True))
    room = await alice.create_room("whiteboard", invite=[bob.user_id, carol.user_id])
    await carol.join(room)

    async with anyio.create_task_group() as tg, chromium() as browser, \
            carol.open_doc(room, DOC_NAME) as observer:
        a_url = await tg.start(lambda task_status: run_whiteboard(alice, room,
                                                                  task_status=task_status))
        b_url = await tg.start(lambda task_status: run_whiteboard(bob, room,
                                                                  task_status=task_status))
        await observer.wait_synced()
        a_page = await open_page(browser, a_url)
        b_page = await open_page(browser, b_url)
        for page in (a_page, b_page):
            await wait_ready(page)

        # Alice's page draws: Bob's page and a Python client (carol) see the stroke.
        await draw(a_page, [(100, 100), (500, 300), (900, 200)])
        await b_page.wait_for_function("whiteboard.strokes().length === 1", timeout=WAIT_MS)
        board = Board(observer.doc, carol.user_id)
        with anyio.fail_after(30):
            while len(board.snapshot()["strokes"]) != 1:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        (py_stroke,) = board.snapshot()["strokes"]
        (page_stroke,) = await strokes(b_page)
        assert py_stroke == page_stroke and py_stroke["author"] == alice.user_id

        # Settle: both servers have every edit on the homeserver, and the observer
        # holds what they hold and has applied each of their update events from the
        # timeline too. (It can hold the stroke before: its first updates, or all of
        # them by the live channel, whose timeline copies then arrive later and count
        # as applied. Both happened once, during the idle minute.) Strokes are far
        # below the chunk size, so each update event sent is one applied.
        with anyio.fail_after(30):
            while True:
                stats = [await _stats(u) for u in (a_url, b_url)]
                sent = sum(s["doc"]["update_events_sent"] for s in stats)
                if all(s["doc"]["pending_edits"] == 0 and not s["doc"]["in_flight"]
                       and s["state_bytes"] == len(observer.doc.get_update())
                       for s in stats) and observer.statistics().updates_applied >= sent:
                    break
                await anyio.sleep(0.1)

        def counters(stats: list[dict[str, Any]]) -> list[tuple[int, ...]]:
            return [(s["doc"]["update_events_sent"], s["doc"]["bytes_sent"],
                     s["doc"]["edits"], s["state_bytes"]) for s in stats]

        before = counters(stats)
        seen_before = observer.statistics()
        state_before = len(observer.doc.get_update())
        pages_before = [await p.evaluate("whiteboard.stateBytes()") for p in (a_page, b_page)]

        await anyio.sleep(IDLE_SECONDS)  # two pages open, nobody drawing

        after = counters([await _stats(u) for u in (a_url, b_url)])
        seen_after = observer.statistics()
        assert after == before
        assert seen_after.updates_applied == seen_before.updates_applied
        assert seen_after.bytes_applied == seen_before.bytes_applied
        assert len(observer.doc.get_update()) == state_before
        assert [await p.evaluate("whiteboard.stateBytes()")
                for p in (a_page, b_page)] == pages_before
        # The pages stayed connected all along (awareness kept them live).
        assert all([await p.evaluate("whiteboard.connected()") for p in (a_page, b_page)])
        assert a_page.errors == [] and b_page.errors == []
        tg.cancel_scope.cancel()


async def test_dashboard_shows_history_live_readings_and_a_device_going_offline(
    make_user, make_client, hs, tmp_path
):
    plant_creds = await make_user("plant", relaxed=True)
    ops_creds = await make_user("ops")
    plant = await make_client(plant_creds)
    ops = await make_client(ops_creds)
    # ops only reads: it is invited but not a writer.
    room = await plant.create_room("sensors", invite=[ops.user_id], writers=[plant.user_id])
    device = f"probe-{uuid.uuid4().hex[:6]}"
    sensor = f"{device}/temperature"

    async with anyio.create_task_group() as tg, chromium() as browser:
        url = await tg.start(lambda task_status: run_dashboard(ops, room,
                                                               task_status=task_status))
        async with plant.publisher(room, device=device, offline_after=30) as pub:
            pub.declare(sensor, precision=2, unit="Cel")
            # Half an hour of history, one reading a minute, stored before the page opens.
            now = int(time.time() * 1000)
            past = [round(20 + i / 10, 2) for i in range(30)]
            for i, value in enumerate(past):
                pub.publish(sensor, value, t=now - (30 - i) * 60_000)
            await pub.flush()
            await pub.wait_online()

            page = await open_page(browser, url)
            await page.wait_for_function(
                "s => dashboard.snapshots() > 0 && s in dashboard.sensors()", arg=sensor,
                timeout=WAIT_MS)
            shown = (await page.evaluate("dashboard.sensors()"))[sensor]
            # One point per reading: they came through window() on open.
            assert shown["points"] >= len(past)
            assert shown["value"] == past[-1]
            assert shown["unit"] == "Cel"
            await page.wait_for_function(
                "d => (dashboard.devices()[d] || {}).badge === 'online'", arg=device,
                timeout=WAIT_MS)

            # A reading published now shows as the last value, with its unit.
            pub.publish(sensor, 23.45)
            await page.wait_for_function(
                "s => (dashboard.sensors()[s] || {}).value === 23.45", arg=sensor,
                timeout=WAIT_MS)
            card = page.locator(f'article.card[data-sensor="{sensor}"] .value')
            assert (await card.inner_text()).replace("\n", "") == "23.45°C"
        # The publisher stopped cleanly: the device turns offline on the page.
        await page.wait_for_function(
            "d => (dashboard.devices()[d] || {}).badge === 'offline'", arg=device,
            timeout=WAIT_MS)
        section = page.locator(f'section.device[data-device="{device}"]')
        assert await section.get_attribute("data-online") == "false"

        # The sensor example itself, as a user runs it, then stopped with Ctrl-C.
        lab = f"lab-{uuid.uuid4().hex[:6]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "examples.iot_sensor.sensor", "--homeserver", hs.url,
             "--user", plant.user_id, "--store", str(tmp_path / "sensor.db"),
             "--room", room, "--devices", f"{lab}:climate", "--interval", "0.5"],
            env={**os.environ, "MXSYNC_PASSWORD": plant_creds.password,
                 "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )
        try:
            for quantity in ("temperature", "humidity"):
                await page.wait_for_function(
                    "s => (dashboard.sensors()[s] || {}).value !== undefined",
                    arg=f"{lab}/{quantity}", timeout=WAIT_MS)
            await page.wait_for_function(
                "d => (dashboard.devices()[d] || {}).badge === 'online'", arg=lab,
                timeout=WAIT_MS)
            shown = (await page.evaluate("dashboard.sensors()"))[f"{lab}/temperature"]
            assert shown["unit"] == "Cel" and 10 < shown["value"] < 35
            proc.send_signal(signal.SIGINT)
            await page.wait_for_function(
                "d => (dashboard.devices()[d] || {}).badge === 'offline'", arg=lab,
                timeout=WAIT_MS)
            with anyio.fail_after(30):
                while proc.poll() is None:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output
        assert f"sensors: {lab} is offline (shutdown)" in output
        devices = await page.evaluate("dashboard.devices()")
        assert devices[lab]["reason"] == "shutdown"
        assert page.errors == []
        tg.cancel_scope.cancel()
