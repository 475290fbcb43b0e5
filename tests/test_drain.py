"""Graceful drain: SIGTERM to a real `broadcast serve` process with sessions on it."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import httpx
import pytest

from tests.support.nodes import Node, nodes
from tests.support.peers import Publisher, Viewer
from tests.support.redisproc import RedisProcess, redis_server
from tests.test_cluster import _offer, get, publish, until

__all__ = ["nodes", "redis_server"]

pytestmark = pytest.mark.timeout(120)


async def draining(client: httpx.AsyncClient, url: str) -> bool:
    return (await client.get(f"{url}/readyz")).status_code == 503


async def exited(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    async def gone() -> bool:
        return process.poll() is not None

    await until(gone, timeout, "the server exits")
    return process.returncode


async def watched(client: httpx.AsyncClient, url: str) -> tuple[Publisher, Viewer]:
    """A publisher of `cam` on the node at `url`, and a viewer there decoding frames."""
    publisher = await publish(client, url)
    viewer = Viewer(url, "cam")
    assert (await viewer.start(client)).status == 201
    await viewer.wait_frames(video=10, timeout=20)
    return publisher, viewer


async def post_offer(client: httpx.AsyncClient, url: str) -> httpx.Response:
    return await client.post(
        url, content=await _offer(), headers={"Content-Type": "application/sdp"}
    )


async def test_sigterm_drains_then_exits_when_the_sessions_leave(
    nodes: Callable[..., Node],
) -> None:
    node = nodes("n", None)
    async with httpx.AsyncClient(timeout=10) as client:
        publisher, viewer = await watched(client, node.url)
        node.process.send_signal(signal.SIGTERM)
        await until(lambda: draining(client, node.url), 5, "/readyz fails")
        assert (await client.get(f"{node.url}/readyz")).json()["status"] == "draining"
        # No other node: new sessions are refused with a reason and a time to come back.
        refused = await post_offer(client, f"{node.url}/whep/cam")
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert "shutting down" in refused.json()["detail"]
        second = Publisher(node.url, "other")
        result = await second.start(client)
        await second.stop()
        assert result.status == 503 and result.headers["retry-after"] == "5"
        # The sessions already here keep flowing.
        await viewer.wait_frames(video=viewer.video.frames + 30, timeout=10)
        assert node.process.poll() is None

        await viewer.stop(client)
        await publisher.stop(client)
    assert await exited(node.process, 10) == 0


async def test_a_second_sigterm_exits_at_once(nodes: Callable[..., Node]) -> None:
    node = nodes("n", None)
    async with httpx.AsyncClient(timeout=10) as client:
        publisher, viewer = await watched(client, node.url)
        node.process.send_signal(signal.SIGTERM)
        await until(lambda: draining(client, node.url), 5, "/readyz fails")
        node.process.send_signal(signal.SIGTERM)
        assert await exited(node.process, 5) is not None
        await viewer.stop()
        await publisher.stop()


async def test_a_draining_node_sends_new_sessions_to_another(
    redis_server: RedisProcess, nodes: Callable[..., Node]
) -> None:
    a, b = nodes("a", redis_server.url), nodes("b", redis_server.url)
    async with httpx.AsyncClient(timeout=10) as client:
        publisher, viewer = await watched(client, a.url)

        a.process.send_signal(signal.SIGTERM)

        async def marked() -> bool:
            listed = await get(client, f"{b.url}/api/nodes")
            return any(n["node_id"] == "a" and n["draining"] for n in listed or [])

        await until(marked, 5, "the registry shows a draining")
        moved = await post_offer(client, f"{a.url}/whep/cam?layer=h")
        assert moved.status_code == 307, moved.text
        assert moved.headers["location"] == f"{b.url}/whep/cam?layer=h"
        # Edge b still relays the stream from a, whose publisher stays until it leaves.
        async with httpx.AsyncClient(timeout=10, follow_redirects=True) as following:
            late = Viewer(a.url, "cam")
            assert (await late.start(following)).status == 201
            await late.wait_frames(video=10, timeout=20)
            await late.stop(following)
        await viewer.wait_frames(video=viewer.video.frames + 30, timeout=10)
        await viewer.stop(client)
        await publisher.stop(client)
    assert await exited(a.process, 20) == 0


async def test_workers_drain_together(nodes: Callable[..., Node]) -> None:
    node = nodes("n", None, workers=2)
    async with httpx.AsyncClient(timeout=10) as client:

        async def both_up() -> bool:
            return len(await get(client, f"{node.url}/api/nodes") or []) == 2

        await until(both_up, 15, "both workers up")
        publisher = Publisher(node.private_url(0), "cam")
        assert (await publisher.start(client)).status == 201
        viewer = Viewer(node.private_url(1), "cam")
        assert (await viewer.start(client)).status == 201
        await viewer.wait_frames(video=10, timeout=20)

        node.process.send_signal(signal.SIGTERM)
        for index in (0, 1):
            url = node.private_url(index)
            await until(lambda url=url: draining(client, url), 5, f"worker {index} drains")
        await viewer.wait_frames(video=viewer.video.frames + 30, timeout=10)
        assert node.process.poll() is None
        await viewer.stop(client)
        await publisher.stop(client)
    assert await exited(node.process, 15) == 0
