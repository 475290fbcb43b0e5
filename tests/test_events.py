"""The WHEP server-sent events extension over HTTP, with real peers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from broadcast.protocol.links import parse_link_header
from tests.support.peers import Publisher, Viewer

SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events"


def sse_url(headers: httpx.Headers) -> tuple[str, str]:
    """(URL, events parameter) of the SSE extension in a 201's Link header."""
    for target, params in parse_link_header(headers.get("link", "")):
        if params.get("rel") == SSE_REL:
            return target, params.get("events", "")
    raise AssertionError(f"no {SSE_REL} link in {headers.get('link')!r}")


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    name = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


async def next_event(events: AsyncIterator[tuple[str, Any]], timeout: float = 5) -> tuple[str, Any]:
    return await asyncio.wait_for(anext(events), timeout)


async def until(
    events: AsyncIterator[tuple[str, Any]], wanted: tuple[str, Any], timeout: float = 10
) -> list[tuple[str, Any]]:
    """Read events up to and including `wanted`; what came before it."""
    seen: list[tuple[str, Any]] = []
    while (event := await next_event(events, timeout)) != wanted:
        seen.append(event)
        assert len(seen) < 20, seen
    return seen


async def test_events_follow_the_stream(server) -> None:
    viewer = Viewer(server.base_url, "ev")
    result = await viewer.start(server.client)
    assert result.status == 201
    url, offered = sse_url(result.headers)
    assert {"active", "inactive", "viewercount", "layers"} <= set(offered.split(","))

    r = await server.client.post(url, json=["active", "inactive", "viewercount"])
    assert r.status_code == 201, r.text
    stream_url = r.headers["location"]
    async with server.client.stream("GET", stream_url, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
        assert await next_event(events) == ("inactive", {})  # no publisher yet
        # 0 until this viewer's connection is up, then 1
        before = await until(events, ("viewercount", {"viewercount": 1}))
        assert all(e == ("viewercount", {"viewercount": 0}) for e in before), before

        publisher = Publisher(server.base_url, "ev")
        assert (await publisher.start(server.client)).status == 201
        assert await next_event(events, 10) == ("active", {})

        second = Viewer(server.base_url, "ev")
        assert (await second.start(server.client)).status == 201
        assert await until(events, ("viewercount", {"viewercount": 2})) == []
        await second.stop(server.client)
        assert await until(events, ("viewercount", {"viewercount": 1})) == []

        await publisher.stop(server.client)
        assert await next_event(events, 10) == ("inactive", {})

        await viewer.stop(server.client)  # the session ends: so does its event stream
        rest = [e async for e in events]
        assert rest == []


async def test_layers_event_lists_the_video_layer(server) -> None:
    publisher = Publisher(server.base_url, "lay")
    assert (await publisher.start(server.client)).status == 201
    viewer = Viewer(server.base_url, "lay")
    result = await viewer.start(server.client)
    await viewer.wait_frames(video=10, timeout=15)
    url, _ = sse_url(result.headers)
    r = await server.client.post(url, json=["layers"])
    async with server.client.stream("GET", r.headers["location"], timeout=10) as response:
        name, data = await next_event(read_events(response))
    assert name == "layers"
    ((mid, info),) = data.items()
    assert mid in {t.mid for t in viewer.pc.getTransceivers() if t.kind == "video"}
    assert set(info) == {"active", "inactive", "layers"}
    await viewer.stop(server.client)
    await publisher.stop(server.client)


async def test_bad_subscriptions_are_refused(server) -> None:
    viewer = Viewer(server.base_url, "bad")
    result = await viewer.start(server.client)
    url, _ = sse_url(result.headers)
    for body, status in [
        (b"not json", 400),
        (b"[]", 400),
        (b'["active", "fireworks"]', 400),
        (b'{"active": true}', 400),
    ]:
        r = await server.client.post(
            url, content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    elsewhere = url.replace(result.location or "", "/whep/bad/nosuchsession")
    assert (await server.client.post(elsewhere, json=["active"])).status_code == 404
    assert (await server.client.get(f"{url}/nosuchsubscription")).status_code == 404
    await viewer.stop(server.client)
    assert (await server.client.post(url, json=["active"])).status_code == 404
