"""End-to-end encryption (`#key=` on the pages) in Debian's Chromium against a real server.

The publisher page seals every frame in the browser (player/e2ee-frame.js); the server only
ever forwards ciphertext with the codec headers in clear. A viewer with the key sees the
picture, one without it or with another key does not, and the key never leaves the pages.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, Request

from tests import test_player
from tests.test_player import FAKE_MEDIA, Problems, frames, pixel_spread, wait_frames

launch = test_player.launch  # the Chromium fixture, shared with the page tests

# Long and unusual, so that finding it in a request cannot be a coincidence (a short key
# such as "k1" could appear by chance in an SDP's random ICE credentials or fingerprint).
KEY = "k1-Quartz-8305"
WRONG = "wrong"
STATUS = "document.querySelector('whep-player').shadowRoot.querySelector('.status').textContent"
BADGE_VISIBLE = """() => !document.querySelector('whep-player').shadowRoot
    .querySelector('.e2ee').hidden"""
# Audio samples the Opus decoder produced: frames dropped by the transform never reach it
# (headless Chromium plays no sound, so totalAudioEnergy stays 0 either way).
AUDIO_SAMPLES = """async () => {
  const pc = document.querySelector('whep-player').client._pc;
  let samples = 0;
  for (const s of (await pc.getStats()).values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') samples += s.totalSamplesReceived || 0;
  }
  return samples;
}"""

pytestmark = pytest.mark.timeout(180)


class RequestLog:
    """Every request a browser context makes (pages and their workers), as text to search."""

    def __init__(self, context: BrowserContext) -> None:
        self.items: list[str] = []
        context.on("request", self._record)

    def _record(self, request: Request) -> None:
        body = request.post_data_buffer or b""
        headers = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        self.items.append(f"{request.method} {request.url}\n{headers}\n{body.decode('latin-1')}")

    def containing(self, secret: str) -> list[str]:
        return [item for item in self.items if secret in item]


async def open_page(context: BrowserContext, url: str) -> tuple[Page, Problems]:
    page = await context.new_page()
    problems = Problems(page)
    await page.goto(url)
    return page, problems


async def go_live(
    context: BrowserContext, url: str, *, codec: str = "", simulcast: bool = False
) -> tuple[Page, Problems]:
    page, problems = await open_page(context, url)
    if codec:
        await page.select_option("#codec", codec)
    if simulcast:
        await page.check("#simulcast")
    await page.click("#go-live")
    await page.locator("#live-indicator").wait_for(state="visible", timeout=15000)
    return page, problems


async def test_encrypted_stream_plays_only_with_the_key(make_server, launch) -> None:
    server = await make_server()
    browser = await launch(FAKE_MEDIA)
    context = await browser.new_context()
    log = RequestLog(context)

    pub, pub_problems = await go_live(context, f"{server.base_url}/publish/cam#key={KEY}")
    assert await pub.locator("#e2ee-indicator").is_visible()
    # The share link carries the key to viewers in its fragment, never in a request.
    assert (await pub.locator("#watch-link").inner_text()).endswith(f"/watch/cam#key={KEY}")

    viewer, viewer_problems = await open_page(context, f"{server.base_url}/watch/cam#key={KEY}")
    no_key, no_key_problems = await open_page(context, f"{server.base_url}/watch/cam")
    wrong, wrong_problems = await open_page(context, f"{server.base_url}/watch/cam#key={WRONG}")

    # With the key: frames decode and show the fake camera's moving pattern.
    assert await wait_frames(viewer, 60, 20) > 60
    assert await pixel_spread(viewer) > 5
    await viewer.wait_for_function(BADGE_VISIBLE, timeout=5000)
    assert await viewer.evaluate(AUDIO_SAMPLES) > 0  # Opus frames decrypted and decoded

    # The wrong key: every frame fails to open and is dropped before the decoder, so not a
    # single frame is decoded, and after a few seconds the player says why.
    await wrong.wait_for_function(f"{STATUS}.includes('cannot decrypt: wrong key?')", timeout=15000)
    assert await frames(wrong) == 0
    await wrong.wait_for_function(BADGE_VISIBLE, timeout=5000)
    assert await wrong.evaluate(AUDIO_SAMPLES) == 0  # no Opus frame reached the decoder

    # No key: the player has no transform, so ciphertext behind valid VP8 headers reaches
    # the decoder. libvpx rejects such frames as corrupt (measured: 0-1 decoded over the
    # whole test), so the robust check is the decoder's count, not pixels: a frame of
    # decoded garbage could look as "busy" as the camera. A handful is tolerated.
    before = await frames(viewer)
    await asyncio.sleep(3)
    keyed = await frames(viewer) - before
    unkeyed = await frames(no_key)
    print(f"e2ee: keyed viewer {keyed} frames in 3 s; viewer without key {unkeyed} in total")
    assert keyed > 30
    assert unkeyed <= 5, unkeyed
    assert await no_key.evaluate(BADGE_VISIBLE) is False

    # The server forwards ciphertext with the codec headers in clear: it still found the
    # VP8 keyframes and read the picture size from them.
    described = (await server.client.get("/api/streams/cam")).json()
    video = next(t for t in described["tracks"] if t["kind"] == "video")
    assert video["codec"].upper().endswith("VP8") and video["keyframes"] > 0, video
    assert any(layer.get("width") for layer in video["layers"]), video

    # The key never left the pages: not in a URL, a header or a body of any request
    # (WHIP/WHEP offers, trickle PATCHes, DELETEs, module and worker script loads).
    await pub.click("#stop")
    await asyncio.sleep(0.5)
    assert log.items and log.containing(KEY) == [] and log.containing(f"key={WRONG}") == []
    assert any("/whip/cam" in item for item in log.items)
    assert any("e2ee-worker.js" in item for item in log.items)
    for problems in (pub_problems, viewer_problems, no_key_problems, wrong_problems):
        assert problems.items == []


@pytest.mark.parametrize(
    ("codec", "simulcast"), [("VP8", True), ("H264", False)], ids=["vp8-simulcast", "h264"]
)
async def test_encrypted_simulcast_and_h264(
    make_server, launch, codec: str, simulcast: bool
) -> None:
    server = await make_server()
    browser = await launch(FAKE_MEDIA)
    context = await browser.new_context()
    url = f"{server.base_url}/publish/enc#key={KEY}"
    pub, pub_problems = await go_live(context, url, codec=codec, simulcast=simulcast)

    viewer, problems = await open_page(context, f"{server.base_url}/watch/enc#key={KEY}")
    assert await wait_frames(viewer, 60, 25) > 60
    assert await pixel_spread(viewer) > 5
    described: dict[str, Any] = (await server.client.get("/api/streams/enc")).json()
    video = next(t for t in described["tracks"] if t["kind"] == "video")
    assert codec in video["codec"].upper().replace(".", ""), video
    # Keyframes found and their size read (VP8 key header, H.264 SPS): headers in clear.
    assert video["keyframes"] > 0 and any(layer.get("width") for layer in video["layers"]), video
    if simulcast:
        # Every layer went through the one sender transform and still shows its size.
        for _ in range(100):
            sized = [layer for layer in video["layers"] if layer.get("width")]
            if len(sized) == 3:
                break
            await asyncio.sleep(0.2)
            described = (await server.client.get("/api/streams/enc")).json()
            video = next(t for t in described["tracks"] if t["kind"] == "video")
        assert len(sized) == 3, video
    await pub.click("#stop")
    assert problems.items == [] and pub_problems.items == []
