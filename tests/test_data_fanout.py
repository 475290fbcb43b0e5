"""Data channels through real servers: a publisher's messages reach every viewer, one of
them on an edge node, complete and in order; viewers talk back only when allowed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from aiortc import RTCPeerConnection

from tests.conftest import RunningServer, ServerFactory
from tests.support.nodes import Node, nodes
from tests.support.peers import DataViewer, Publisher
from tests.support.redisproc import RedisProcess, redis_server

__all__ = ["nodes", "redis_server"]

pytestmark = pytest.mark.timeout(120)

COUNT = 1000


async def publish(client: httpx.AsyncClient, base_url: str, stream: str) -> Publisher:
    """A publisher with a reliable "chat" and an unreliable "telemetry" channel, open."""
    publisher = Publisher(base_url, stream, size=(160, 120))
    opened = [asyncio.Event(), asyncio.Event()]
    chat = publisher.pc.createDataChannel("chat")
    telemetry = publisher.pc.createDataChannel("telemetry", ordered=False, maxRetransmits=0)
    for channel, event in zip((chat, telemetry), opened, strict=True):
        channel.on("open", event.set)
    assert (await publisher.start(client)).status == 201
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 15)
    publisher.chat = chat  # type: ignore[attr-defined]
    return publisher


async def test_a_thousand_messages_reach_five_viewers_in_order_one_on_an_edge(
    redis_server: RedisProcess, nodes: Callable[..., Node]
) -> None:
    origin, edge = nodes("a", redis_server.url), nodes("b", redis_server.url)
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = await publish(client, origin.url, "talk")
        viewers = [DataViewer(origin.url, "talk") for _ in range(4)]
        viewers.append(DataViewer(edge.url, "talk"))
        for viewer in viewers:
            await viewer.start(client)
        for viewer in viewers:  # the mirrors open once a viewer connects (or the edge's)
            await viewer.wait(lambda v=viewer: {"chat", "telemetry"} <= v.channels.keys())
        mirror = viewers[-1].channels["telemetry"]
        assert (mirror.ordered, mirror.maxRetransmits) == (False, 0)
        assert (
            viewers[0].channels["chat"].ordered
            and viewers[0].channels["chat"].maxRetransmits is None
        )

        sent = [f"message {i:04d}" for i in range(COUNT)]
        for text in sent:
            publisher.chat.send(text)  # type: ignore[attr-defined]
        for viewer in viewers:
            await viewer.wait(lambda v=viewer: len(v.messages["chat"]) >= COUNT)
            assert viewer.messages["chat"] == sent
        data = (await client.get(f"{origin.url}/api/streams/talk")).json()["data"]
        listed = next(c for c in data["channels"] if c["label"] == "chat")
        assert listed["messages"] == COUNT and listed["viewers"] == 5  # 4 viewers + 1 edge

        await asyncio.gather(publisher.stop(client), *(v.pc.close() for v in viewers))


async def viewer_says_hello(
    server: RunningServer,
) -> tuple[list[str | bytes], asyncio.Event, list[RTCPeerConnection]]:
    """A viewer sends a text and a binary message on the publisher's "chat" mirror."""
    client = server.client
    publisher = await publish(client, server.base_url, "desk")
    heard: list[str | bytes] = []
    both = asyncio.Event()

    @publisher.chat.on("message")  # type: ignore[attr-defined,misc]
    def on_message(message: str | bytes) -> None:
        heard.append(message)
        if len(heard) == 2:
            both.set()

    viewer = DataViewer(server.base_url, "desk")
    await viewer.start(client)
    await viewer.wait(lambda: "chat" in viewer.channels)
    viewer.channels["chat"].send("hello from a viewer")
    viewer.channels["chat"].send(b"\x00binary")
    return heard, both, [publisher.pc, viewer.pc]


async def test_viewers_talk_back_only_when_the_setting_allows(
    make_server: ServerFactory,
) -> None:
    closed = await make_server()
    heard, _, pcs = await viewer_says_hello(closed)
    for _ in range(200):  # the server counts what it refused (bounded: 10 s)
        data = (await closed.client.get("/api/streams/desk")).json()["data"]
        if data["dropped"]["viewer_disallowed"] >= 2:
            break
        await asyncio.sleep(0.05)
    assert data["dropped"]["viewer_disallowed"] == 2
    assert heard == [] and data["messages_out"] == 0
    await asyncio.gather(*(pc.close() for pc in pcs))

    allowed = await make_server(data_viewer_messages=True)
    heard, both, pcs = await viewer_says_hello(allowed)
    await asyncio.wait_for(both.wait(), 10)
    assert heard == ["hello from a viewer", b"\x00binary"]
    metrics = (await allowed.client.get("/metrics")).text
    assert 'broadcast_data_messages_total{direction="out"} 2.0' in metrics
    await asyncio.gather(*(pc.close() for pc in pcs))
