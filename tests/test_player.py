"""The browser pages in Debian's Chromium (Playwright): publish, watch, recover, embed."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from tests.conftest import free_port
from tests.support.peers import Publisher

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
BASE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]
SESSION_URL = re.compile(r"/wh[ie]p/[A-Za-z0-9_-]+/[^/?]+(/sse/[^/?]+)?$")
FAKE_MEDIA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
FRAMES = "document.querySelector('whep-player').video.getVideoPlaybackQuality().totalVideoFrames"
VIEWERS = """(n) => document.querySelector('whep-player').shadowRoot
    .querySelector('.viewers').textContent.startsWith(`${n} watching`)"""

pytestmark = pytest.mark.timeout(180)  # make test installs chromium; no skip if it is missing


@pytest.fixture
async def launch() -> AsyncIterator[Any]:
    async with async_playwright() as pw:
        browsers: list[Browser] = []

        async def start(flags: list[str]) -> Browser:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BASE_FLAGS + flags)
            browsers.append(browser)
            return browser

        yield start
        for browser in browsers:
            await browser.close()


class Problems:
    """Uncaught page errors and console errors: a page must produce none."""

    def __init__(self, page: Page) -> None:
        self.items: list[str] = []
        page.on("pageerror", lambda exc: self.items.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        # Chromium logs every 4xx; a player's DELETE of a session the server has already
        # ended (its ICE failed first), or its next read of that session's event stream,
        # is answered 404, as RFC 9725 says, and is no error.
        url = message.location.get("url", "")
        if "404" in message.text and SESSION_URL.search(url):
            return
        self.items.append(f"console: {message.text} ({url})")


async def frames(page: Page) -> int:
    return int(await page.evaluate(FRAMES))


async def wait_frames(page: Page, minimum: int, timeout: float) -> int:
    await page.wait_for_function(f"{FRAMES} > {minimum}", timeout=timeout * 1000)
    return await frames(page)


async def pixel_spread(page: Page) -> float:
    """Standard deviation of the video's luma over a 64x36 sample (0 for a flat picture)."""
    return float(
        await page.evaluate(
            """() => {
              const v = document.querySelector('whep-player').video;
              const c = document.createElement('canvas'); c.width = 64; c.height = 36;
              const g = c.getContext('2d'); g.drawImage(v, 0, 0, 64, 36);
              const d = g.getImageData(0, 0, 64, 36).data; let s = 0, q = 0, n = 0;
              for (let i = 0; i < d.length; i += 4) {
                const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
                s += y; q += y * y; n++;
              }
              return Math.sqrt(Math.max(0, q / n - (s / n) ** 2));
            }"""
        )
    )


async def test_publish_page_to_watch_page(make_server, launch, tmp_path: Path) -> None:
    server = await make_server()
    browser = await launch(FAKE_MEDIA)
    pub_page = await (await browser.new_context()).new_page()
    pub_problems = Problems(pub_page)
    await pub_page.goto(f"{server.base_url}/publish/cam")
    await pub_page.click("#go-live")
    indicator = pub_page.locator("#live-indicator")
    await indicator.wait_for(state="visible", timeout=15000)
    assert "LIVE — camera and microphone are being sent" in await indicator.inner_text()

    view_page = await (await browser.new_context()).new_page()
    view_problems = Problems(view_page)
    started = time.monotonic()
    await view_page.goto(f"{server.base_url}/watch/cam")
    await view_page.wait_for_function(f"{FRAMES} > 0", timeout=15000, polling=10)
    first_frame = time.monotonic() - started
    after_post = await view_page.evaluate(
        """() => performance.now() - performance.getEntriesByType('resource')
             .find((e) => e.name.endsWith('/whep/cam')).startTime"""
    )
    print(
        f"Chromium player: first frame {first_frame:.3f} s after opening /watch/cam, "
        f"{after_post / 1000:.3f} s after its WHEP POST"
    )

    index = await view_page.context.new_page()
    index_problems = Problems(index)
    await index.goto(f"{server.base_url}/")
    row = index.locator('[data-stream="cam"]')
    await row.wait_for(timeout=10000)
    assert "VP8" in (await row.inner_text()).upper()
    assert await row.locator('a[href="/watch/cam"]').count() == 1
    await index.close()
    assert index_problems.items == []
    decoded = await wait_frames(view_page, 60, 20)
    assert decoded > 60
    assert await pixel_spread(view_page) > 5  # the fake camera's moving pattern, not black
    stats_js = "document.querySelector('whep-player').client.getStats()"
    await view_page.evaluate(stats_js)  # bitrate is measured between two calls
    await asyncio.sleep(1)
    stats = await view_page.evaluate(stats_js)
    assert stats["audioPackets"] > 0 and stats["bitrate"] > 0, stats
    await view_page.locator("whep-player button.stats-toggle").click()
    await view_page.wait_for_function(
        """() => {
          const el = document.querySelector('whep-player').shadowRoot
            .querySelector('[data-stat="bitrate"]');
          return el && /[1-9]/.test(el.textContent);
        }""",
        timeout=5000,
    )
    await view_page.wait_for_function(VIEWERS, arg=1, timeout=10000)
    shot = tmp_path / "watch.png"
    await view_page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    listed = (await server.client.get("/api/streams")).json()
    assert [s["stream"] for s in listed] == ["cam"] and listed[0]["viewers"] == 1

    await pub_page.click("#stop")
    await indicator.wait_for(state="hidden", timeout=5000)
    ended = await pub_page.evaluate(
        """() => { const p = window.broadcastPublisher;
                   return !p || !p.stream ||
                          p.stream.getTracks().every(t => t.readyState === 'ended'); }"""
    )
    assert ended, "camera and microphone tracks still running after Stop"
    for _ in range(50):
        if not (await server.client.get("/api/streams")).json():
            break
        await asyncio.sleep(0.1)
    assert (await server.client.get("/api/streams")).json() == []
    assert pub_problems.items == [] and view_problems.items == []


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--use-fake-device-for-media-stream", "--deny-permission-prompts"], "permission"),
        (["--use-fake-ui-for-media-stream"], "no camera"),
    ],
    ids=["permission-denied", "no-device"],
)
async def test_publish_page_explains_missing_media(
    make_server, launch, flags: list[str], expected: str
) -> None:
    server = await make_server()
    browser = await launch(flags)
    page = await (await browser.new_context()).new_page()
    problems = Problems(page)
    await page.goto(f"{server.base_url}/publish/cam")
    await page.click("#go-live")
    message = page.locator("#message")
    await message.wait_for(state="visible", timeout=10000)
    assert expected in (await message.inner_text()).lower()
    assert await page.locator("#live-indicator").is_hidden()
    assert (await server.client.get("/api/streams")).json() == []
    assert problems.items == []


UNLABELLED = """() => [...document.querySelectorAll('input, select, button, textarea')]
    .filter((el) => el.type !== 'hidden' && !el.closest('[hidden]'))
    .filter((el) => !(el.labels?.length || el.getAttribute('aria-label') ||
                      el.getAttribute('aria-labelledby') || el.textContent.trim()))
    .map((el) => el.id || el.outerHTML.slice(0, 80))"""


@pytest.mark.parametrize("path", ["/", "/watch/cam", "/publish/cam"])
async def test_pages_fit_a_phone_and_label_every_control(make_server, launch, path: str) -> None:
    server = await make_server()
    browser = await launch(FAKE_MEDIA)
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    problems = Problems(page)
    await page.goto(f"{server.base_url}{path}")
    await page.wait_for_load_state("load")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    assert await page.evaluate(UNLABELLED) == []
    await page.keyboard.press("Tab")  # keyboard reaches a control
    assert await page.evaluate("document.activeElement !== document.body")
    assert problems.items == []


async def test_player_recovers_from_publisher_restart_and_session_loss(make_server, launch) -> None:
    server = await make_server()
    publisher = Publisher(server.base_url, "re")
    assert (await publisher.start(server.client)).status == 201
    browser = await launch([])
    page = await (await browser.new_context()).new_page()
    problems = Problems(page)
    await page.goto(f"{server.base_url}/watch/re")
    await wait_frames(page, 30, 15)

    await publisher.stop(server.client)  # the publisher restarts
    publisher = Publisher(server.base_url, "re")
    assert (await publisher.start(server.client)).status == 201
    restarted = time.monotonic()
    before = await frames(page)
    await wait_frames(page, before + 30, 10)
    print(f"player after a publisher restart: 30 frames in {time.monotonic() - restarted:.2f} s")

    first_session = await page.evaluate("document.querySelector('whep-player').client.sessionUrl")
    assert (await server.client.delete(first_session)).status_code == 200  # killed server-side
    killed = time.monotonic()
    await page.wait_for_function(
        f"document.querySelector('whep-player').client.sessionUrl !== {first_session!r}",
        timeout=10000,
    )
    before = await frames(page)
    await wait_frames(page, before + 30, max(1.0, 10 - (time.monotonic() - killed)))
    print(
        f"player after its session was deleted: playing again in {time.monotonic() - killed:.2f} s"
    )
    assert len(server.hub.viewers_of(server.hub.streams["re"])) == 1
    await publisher.stop(server.client)
    assert problems.items == []


async def test_embedded_player_on_another_origin(make_server, launch, tmp_path: Path) -> None:
    server = await make_server()
    publisher = Publisher(server.base_url, "embed")
    assert (await publisher.start(server.client)).status == 201
    (tmp_path / "index.html").write_text(
        '<!doctype html><title>embed</title><link rel="icon" href="data:,">\n'
        f'<script type="module" src="{server.base_url}/player/whep-player.js"></script>\n'
        f'<whep-player src="{server.base_url}/whep/embed"></whep-player>\n'
    )
    port = free_port()
    site = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        browser = await launch([])
        page = await (await browser.new_context()).new_page()
        problems = Problems(page)
        for _ in range(50):
            try:
                await page.goto(f"http://127.0.0.1:{port}/")
                break
            except Exception:  # the static server is still starting
                await asyncio.sleep(0.1)
        await wait_frames(page, 30, 15)
        await page.wait_for_function(VIEWERS, arg=1, timeout=10000)  # /api/streams via CORS
        assert problems.items == []
    finally:
        site.terminate()
        site.wait(5)
        await publisher.stop(server.client)


async def test_player_plays_ffmpeg_h264(make_server, launch, tmp_path: Path) -> None:
    server = await make_server()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.ffmpeg_whip",
        "--url",
        f"{server.base_url}/whip/h264",
        "--seconds",
        "20",
        "--gop",
        "30",
        "--cert-dir",
        str(tmp_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b'"connected"' in line, line
        browser = await launch([])
        page = await (await browser.new_context()).new_page()
        problems = Problems(page)
        await page.goto(f"{server.base_url}/watch/h264")
        await wait_frames(page, 30, 15)
        stats = await page.evaluate("document.querySelector('whep-player').client.getStats()")
        assert "264" in str(stats["codec"]).upper(), stats
        assert problems.items == []
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


def test_client_modules_unit_tests() -> None:
    node = shutil.which("node")
    assert node, "make test installs nodejs"
    tests = sorted(str(p) for p in (ROOT / "player" / "tests").glob("*.test.mjs"))
    assert tests, "no JavaScript tests found"
    done = subprocess.run(
        [node, "--test", *tests], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = [line for line in done.stdout.splitlines() if line.startswith("# pass ")]
    assert passed and int(passed[-1].split()[-1]) >= 10, done.stdout[-2000:]
