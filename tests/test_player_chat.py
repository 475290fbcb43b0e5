"""Chat over data channels in Debian's Chromium (Playwright): the watch page shows what an
aiortc publisher sends and answers it; the publish page talks to an aiortc viewer."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCDataChannel
from playwright.async_api import Page, expect

from tests.conftest import RunningServer, ServerFactory
from tests.support.peers import DataViewer, Publisher
from tests.test_player import FAKE_MEDIA, Problems, launch, wait_frames

__all__ = ["launch"]

pytestmark = pytest.mark.timeout(180)

PLAYER = "whep-player"
SENT = ["1 hello", "2 <b>x</b> & <script>boom()</script>", "3 bye"]


async def live_publisher(server: RunningServer, stream: str) -> tuple[Publisher, RTCDataChannel]:
    """An aiortc publisher whose reliable "chat" channel is open."""
    publisher = Publisher(server.base_url, stream, size=(320, 180))
    chat = publisher.pc.createDataChannel("chat")  # before the offer: in-band (RFC 8832)
    opened = asyncio.Event()
    chat.on("open", opened.set)
    assert (await publisher.start(server.client)).status == 201
    await asyncio.wait_for(opened.wait(), 15)
    return publisher, chat


async def watch(page: Page, server: RunningServer, stream: str) -> None:
    """Open the watch page, wait for video and for the player's mirror of "chat"."""
    await page.goto(f"{server.base_url}/watch/{stream}")
    await wait_frames(page, 10, 15)
    # The Chat button appears once the "chat" mirror is open: messages sent from then on
    # reach this player.
    await page.locator(f"{PLAYER} .chat-toggle").wait_for(state="visible", timeout=10000)


async def test_watch_page_shows_publisher_messages_as_plain_text(
    make_server: ServerFactory, launch
) -> None:
    server = await make_server()
    publisher, chat = await live_publisher(server, "talk")
    browser = await launch([])
    page = await (await browser.new_context()).new_page()
    problems = Problems(page)
    await watch(page, server, "talk")
    panel = page.locator(f"{PLAYER} .chat")
    assert await panel.is_hidden()  # nothing said yet

    chat.send(b"\x00\x01binary")  # not shown, only counted
    for text in SENT:
        chat.send(text)
    log = page.locator(f"{PLAYER} .chat-log")
    await expect(log.locator(".chat-msg")).to_have_text(SENT, timeout=10000)
    assert await panel.is_visible()
    assert await log.get_attribute("role") == "log"
    assert await log.get_attribute("aria-live") == "polite"
    assert await log.locator("b, script").count() == 0  # shown literally, never parsed
    counts = await page.evaluate(f"document.querySelector('{PLAYER}').chat.counts")
    assert counts == {"text": 3, "binary": 1}
    # The viewer may hide the panel, and show it again.
    toggle = page.locator(f"{PLAYER} .chat-toggle")
    await toggle.click()
    await panel.wait_for(state="hidden", timeout=5000)
    await toggle.click()
    await panel.wait_for(state="visible", timeout=5000)

    await publisher.stop(server.client)
    assert problems.items == []


async def test_watch_page_answers_the_publisher_when_allowed(
    make_server: ServerFactory, launch
) -> None:
    server = await make_server(data_viewer_messages=True)
    publisher, chat = await live_publisher(server, "desk")
    heard: list[str | bytes] = []
    answered = asyncio.Event()

    @chat.on("message")
    def on_message(message: str | bytes) -> None:
        heard.append(message)
        answered.set()

    browser = await launch([])
    page = await (await browser.new_context()).new_page()
    problems = Problems(page)
    await watch(page, server, "desk")
    chat.send("welcome")
    log = page.locator(f"{PLAYER} .chat-log .chat-msg")
    await expect(log).to_have_text(["welcome"], timeout=10000)

    box = page.locator(f"{PLAYER} .chat-input")
    await box.fill("hi from <i>Chromium</i>")
    await box.press("Enter")
    await asyncio.wait_for(answered.wait(), 10)
    assert heard == ["hi from <i>Chromium</i>"]
    await expect(log).to_have_text(["welcome", "Youhi from <i>Chromium</i>"], timeout=5000)
    assert await box.input_value() == ""

    await publisher.stop(server.client)
    assert problems.items == []


async def test_publish_page_chats_with_a_viewer(make_server: ServerFactory, launch) -> None:
    server = await make_server(data_viewer_messages=True)
    browser = await launch(FAKE_MEDIA)
    page = await (await browser.new_context()).new_page()
    problems = Problems(page)
    await page.goto(f"{server.base_url}/publish/studio")
    box = page.locator("#chat-input")
    assert await box.is_disabled()  # not live: no channel
    await page.click("#go-live")
    await page.locator("#live-indicator").wait_for(state="visible", timeout=15000)
    await expect(box).to_be_enabled(timeout=10000)

    viewer = DataViewer(server.base_url, "studio")
    await viewer.start(server.client)
    await viewer.wait(lambda: "chat" in viewer.channels, 15)
    await box.fill("hello viewers")
    await page.click("#chat-send")
    await viewer.wait(lambda: bool(viewer.messages.get("chat")), 10)
    assert viewer.messages["chat"] == ["hello viewers"]

    viewer.channels["chat"].send("<em>hi</em> back")
    entries = page.locator("#chat-log .chat-msg")
    await expect(entries).to_have_text(
        ["Youhello viewers", "Viewer<em>hi</em> back"], timeout=10000
    )
    assert await page.locator("#chat-log em").count() == 0

    await page.click("#stop")
    await expect(box).to_be_disabled(timeout=5000)
    await viewer.pc.close()
    assert problems.items == []
