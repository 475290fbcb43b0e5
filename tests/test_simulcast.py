"""Simulcast ingest end to end: Chromium publishes three layers, viewers pin each one."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from broadcast.protocol.links import parse_link_header
from tests.support.peers import Viewer
from tests.test_player import FAKE_MEDIA, Problems, launch
from tests.test_simulcast_sdp import CHROMIUM_OFFER

# launch: the Chromium fixture (test_player.py)
__all__ = ["go_live_with_simulcast", "launch", "publish_simulcast_page"]

pytestmark = pytest.mark.timeout(180)  # make test installs chromium; no skip if it is missing

LAYERS = {"h": (1280, 720), "m": (640, 360), "l": (320, 180)}


async def _video_layers(server: Any, name: str) -> list[dict[str, Any]]:
    response = await server.client.get(f"/api/streams/{name}")
    if response.status_code != 200:
        return []
    tracks = [t for t in response.json()["tracks"] if t["kind"] == "video"]
    return list(tracks[0]["layers"]) if tracks else []


def _all_sending(layers: list[dict[str, Any]]) -> bool:
    sizes = {layer["rid"]: (layer.get("width"), layer.get("height")) for layer in layers}
    return sizes == LAYERS and all(layer["active"] for layer in layers)


async def _layers_event_lists(server: Any, viewer: Viewer) -> None:
    """The WHEP server-sent `layers` event names the three layers with their sizes."""
    sse = next(
        target
        for target, params in parse_link_header(viewer.result.headers["link"])
        if params.get("rel") == "urn:ietf:params:whep:ext:core:server-sent-events"
    )
    r = await server.client.post(sse, json=["layers"])
    assert r.status_code == 201, r.text
    async with server.client.stream("GET", r.headers["location"], timeout=10) as response:
        lines = response.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 5) == "event: layers"
        data = json.loads((await asyncio.wait_for(anext(lines), 5))[len("data: ") :])
    ((_, info),) = data.items()
    sizes = {x["encodingId"]: (x["width"], x["height"]) for x in info["layers"]}
    assert sizes == LAYERS, sizes
    assert sorted(x["id"] for x in info["active"]) == sorted(LAYERS)


async def publish_simulcast_page(launch: Any, url: str) -> tuple[Any, Problems]:
    """Chromium's publisher page at `url` goes live with VP8 simulcast from a 1280x720
    fake camera; returns (page, problems) once the page says it is live."""
    browser = await launch(FAKE_MEDIA)
    page = await (await browser.new_context()).new_page()
    problems = Problems(page)
    await page.goto(url)
    await page.select_option("#resolution", "1280x720")
    await page.wait_for_selector("#codec option[value=VP8]", state="attached", timeout=5000)
    await page.select_option("#codec", "VP8")
    await page.check("#simulcast")
    await page.click("#go-live")
    await page.locator("#live-indicator").wait_for(state="visible", timeout=15000)
    return page, problems


async def go_live_with_simulcast(server: Any, launch: Any, name: str) -> tuple[Any, Problems]:
    """Chromium publishes `name` with three VP8 layers from a 1280x720 fake camera; returns
    (page, problems) once all three are sending."""
    page, problems = await publish_simulcast_page(launch, f"{server.base_url}/publish/{name}")
    live = time.monotonic()
    (publisher,) = [s for s in server.hub.sessions.values() if s.role == "whip"]
    assert "a=simulcast:recv l;m;h" in publisher.answer
    assert "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in publisher.answer

    # Chromium adds a layer once its bandwidth estimate allows it.
    layers: list[dict[str, Any]] = []
    while time.monotonic() - live < 45:
        layers = await _video_layers(server, name)
        if _all_sending(layers):
            break
        await asyncio.sleep(0.2)
    ramp = time.monotonic() - live
    assert _all_sending(layers), layers
    print(f"Chromium simulcast: all three layers sending {ramp:.1f} s after going live")
    assert all(layer["bitrate"] > 0 for layer in layers), layers
    return page, problems


async def test_chromium_simulcast_to_viewers_pinned_to_each_layer(make_server, launch) -> None:
    server = await make_server()
    page, problems = await go_live_with_simulcast(server, launch, "sim")

    viewers = {rid: Viewer(server.base_url, "sim", layer=rid) for rid in LAYERS}
    for viewer in viewers.values():
        assert (await viewer.start(server.client)).status == 201
    await asyncio.gather(*(v.wait_frames(video=30, timeout=30) for v in viewers.values()))
    for rid, viewer in viewers.items():
        assert viewer.video.sizes == {LAYERS[rid]}, (rid, viewer.video.sizes)

    detail = (await server.client.get("/api/streams/sim")).json()
    current = sorted(s["tracks"]["video"]["layer"] for s in detail["viewer_sessions"])
    assert current == sorted(LAYERS)
    await _layers_event_lists(server, viewers["h"])

    # The layer extension moves the top viewer to the smallest layer, at its keyframe.
    link = viewers["h"].result.headers["link"]
    url = next(t for t, p in parse_link_header(link) if p["rel"].endswith(":layer"))
    assert (await server.client.post(url, json={"encodingId": "l"})).status_code == 204
    top = viewers["h"]
    for _ in range(2):  # 30 frames that hold the switch, then 30 after it
        top.video.sizes.clear()
        await top.wait_frames(video=top.video.frames + 30, timeout=15)
    assert top.video.sizes == {LAYERS["l"]}, top.video.sizes
    for viewer in viewers.values():
        await viewer.stop(server.client)
    await _player_quality_menu(server, await launch([]))
    # Three choices by viewers: the aiortc one's and the player's two.
    text = (await server.client.get("/metrics")).text
    assert 'broadcast_layer_switches_total{reason="viewer"} 3.0' in text, text
    await page.click("#stop")
    assert problems.items == []


async def _player_quality_menu(server: Any, browser: Any) -> None:
    """The player's quality menu lists the layers (SSE `layers`) and pins one through the
    layer extension: the picture becomes that layer's size."""
    page = await (await browser.new_context()).new_page()
    problems = Problems(page)
    await page.goto(f"{server.base_url}/watch/sim")
    menu = page.locator("whep-player select.quality")
    await menu.wait_for(state="visible", timeout=15000)
    values = await menu.evaluate("s => [...s.options].map(o => o.value)")
    assert values == ["", "l", "m", "h"] or sorted(values) == ["", "h", "l", "m"], values
    size = "() => document.querySelector('whep-player').video.videoWidth"
    await page.wait_for_function(f"({size})() === 1280", timeout=15000)
    await menu.select_option("l")
    await page.wait_for_function(f"({size})() === 320", timeout=15000)
    (session,) = (await server.client.get("/api/streams/sim")).json()["viewer_sessions"]
    assert session["tracks"]["video"]["layer"] == "l"
    await menu.select_option("")  # automatic again: back to the top layer
    await page.wait_for_function(f"({size})() === 1280", timeout=15000)
    await page.close()
    assert problems.items == []


async def test_bad_simulcast_or_layer_is_a_400(server) -> None:
    viewer = Viewer(server.base_url, "sim", layer="a.b")
    result = await viewer.start(server.client)
    await viewer.stop()
    assert result.status == 400 and "layer must be a simulcast rid" in result.answer
    offer = CHROMIUM_OFFER.replace("a=simulcast:send l;m;h", "a=simulcast:send l;m;m")
    response = await server.client.post(
        "/whip/sim", content=offer, headers={"Content-Type": "application/sdp"}
    )
    assert response.status_code == 400
    assert "names rid m twice" in response.json()["detail"]
    assert server.hub.sessions == {}
