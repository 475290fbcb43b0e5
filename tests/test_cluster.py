"""A cluster on loopback: three `broadcast serve` processes sharing a real redis-server.

The publisher and the viewers are aiortc peers in this process; each node is its own
process, as in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.support.nodes import SECRET, Node, nodes
from tests.support.peers import Publisher, Viewer
from tests.support.redisproc import RedisProcess, redis_server
from tests.test_player import launch
from tests.test_simulcast import publish_simulcast_page

__all__ = ["launch", "nodes", "redis_server"]

pytestmark = pytest.mark.timeout(120)


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll `check` every 0.2 s; the seconds it took, or fail after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


async def publish(client: httpx.AsyncClient, node_url: str, name: str = "cam") -> Publisher:
    """An aiortc publisher, live on the node."""
    publisher = Publisher(node_url, name)
    assert (await publisher.start(client)).status == 201
    return publisher


async def get(client: httpx.AsyncClient, url: str) -> Any:
    response = await client.get(url)
    return response.json() if response.status_code == 200 else None


async def test_viewers_on_any_node_share_one_upstream_per_edge(
    redis_server: RedisProcess, nodes: Callable[..., Node]
) -> None:
    a, b, c = (nodes(n, redis_server.url) for n in ("a", "b", "c"))
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = await publish(client, a.url)
        viewers = [Viewer(node.url, "cam") for node in (b, b, c, c, c)]
        for viewer in viewers:
            result = await viewer.start(client)
            assert result.status == 201, result.answer
        await asyncio.gather(*(v.wait_frames(video=30, audio=20, timeout=30) for v in viewers))

        origin = await get(client, f"{a.url}/api/streams/cam")
        # The origin sees exactly one viewer per edge: the edges' upstream sessions.
        assert origin["viewers"] == 2, origin
        for edge, count in ((b, 2), (c, 3)):
            detail = await get(client, f"{edge.url}/api/streams/cam")
            assert detail["relayed"] is True and detail["node"] == "a", detail
            assert detail["viewers"] == count
        metrics = (await client.get(f"{b.url}/metrics")).text
        assert "broadcast_relay_upstreams 1.0" in metrics
        assert "broadcast_registry_up 1.0" in metrics
        listed = await get(client, f"{c.url}/api/nodes")
        assert sorted(n["node_id"] for n in listed) == ["a", "b", "c"]
        assert {n["node_id"]: n["url"] for n in listed}["a"] == a.url

        # A second publisher for the stream on another node is refused while A's is live.
        second = Publisher(b.url, "cam")
        assert (await second.start(client)).status == 409
        await second.stop()
        # ...and b's viewers go on receiving the relayed stream.
        await viewers[0].wait_frames(video=viewers[0].video.frames + 30, timeout=10)
        for viewer in viewers:
            await viewer.stop(client)
        await publisher.stop(client)


async def test_redirect_mode_sends_viewers_to_the_origin(
    redis_server: RedisProcess, nodes: Callable[..., Node]
) -> None:
    a = nodes("a", redis_server.url, cluster_mode="redirect")
    b = nodes("b", redis_server.url, cluster_mode="redirect")
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = await publish(client, a.url)
        response = await client.post(
            f"{b.url}/whep/cam?layer=h",
            content=(await _offer()),
            headers={"Content-Type": "application/sdp"},
        )
        assert response.status_code == 307, response.text
        assert response.headers["location"] == f"{a.url}/whep/cam?layer=h"
        async with httpx.AsyncClient(timeout=10, follow_redirects=True) as following:
            viewer = Viewer(b.url, "cam")
            result = await viewer.start(following)
            assert result.status == 201
            await viewer.wait_frames(video=30, timeout=20)
            await viewer.stop()
        await publisher.stop(client)


async def _offer() -> str:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return str(sdp)


async def test_origin_crash_then_the_publisher_moves(
    redis_server: RedisProcess, nodes: Callable[..., Node]
) -> None:
    a, b, c = (nodes(n, redis_server.url) for n in ("a", "b", "c"))
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = await publish(client, a.url)
        viewer = Viewer(c.url, "cam")
        assert (await viewer.start(client)).status == 201
        await viewer.wait_frames(video=30, timeout=30)

        a.kill()
        await publisher.stop()

        async def a_is_gone() -> bool:
            listed = await get(client, f"{b.url}/api/nodes")
            streams = await get(client, f"{b.url}/api/streams")
            return "a" not in {n["node_id"] for n in listed} and streams == []

        gone = await until(a_is_gone, 10, "node a and its stream leave the registry")
        print(f"origin killed: its node and stream records gone after {gone:.1f} s")

        moved, resumed = await publish_and_resume(client, b.url, viewer)
        print(f"publisher moved to b: the viewer on c decoded 30 new frames {resumed:.1f} s later")
        detail = await get(client, f"{c.url}/api/streams/cam")
        assert detail["node"] == "b" and detail["relayed"] is True
        await viewer.stop(client)
        await moved.stop(client)


async def test_redis_outage_keeps_streams_flowing_and_heals(
    redis_server: RedisProcess, nodes: Callable[..., Node]
) -> None:
    a, b = (nodes(n, redis_server.url) for n in ("a", "b"))
    async with httpx.AsyncClient(timeout=10) as client:
        publishers = [await publish(client, a.url, name) for name in ("cam", "other")]
        viewer = Viewer(b.url, "cam")
        assert (await viewer.start(client)).status == 201
        await viewer.wait_frames(video=30, timeout=30)

        redis_server.stop()
        outage = time.monotonic()

        async def degraded() -> bool:
            ready = await client.get(f"{b.url}/readyz")
            return bool(ready.status_code == 200 and ready.json()["registry"] == "unavailable")

        await until(degraded, 8, "readiness reports the registry unavailable")
        late = Viewer(b.url, "other")  # published on a, never relayed to b yet
        result = await late.start(client)
        assert result.status == 503 and "retry-after" in result.headers, result.answer
        await late.stop()
        frames = viewer.video.frames
        while time.monotonic() - outage < 10:  # the relayed stream never stops
            before = viewer.video.frames
            await viewer.wait_frames(video=before + 10, timeout=3)
        assert viewer.video.frames >= frames + 200

        redis_server.start()  # empty: the heartbeats rebuild it

        async def healed() -> bool:
            listed = await get(client, f"{b.url}/api/nodes")
            streams = await get(client, f"{b.url}/api/streams")
            return (
                listed is not None
                and sorted(n["node_id"] for n in listed) == ["a", "b"]
                and {s["stream"] for s in streams} == {"cam", "other"}
            )

        healed_after = await until(healed, 10, "the registry is rebuilt by heartbeats")
        print(f"redis back: registry rebuilt {healed_after:.1f} s later")
        again = Viewer(b.url, "other")
        assert (await again.start(client)).status == 201
        await again.wait_frames(video=30, timeout=20)
        for peer in (viewer, again):
            await peer.stop(client)
        for publisher in publishers:
            await publisher.stop(client)


async def publish_and_resume(
    client: httpx.AsyncClient, node_url: str, viewer: Viewer
) -> tuple[Publisher, float]:
    """Publish `cam` on a node; the seconds until `viewer` decoded 30 more frames."""
    publisher = await publish(client, node_url)
    frames = viewer.video.frames

    async def resumed() -> bool:
        return viewer.video.frames >= frames + 30

    return publisher, await until(resumed, 20, "the viewer resumes")


async def test_an_edge_relays_every_simulcast_layer_over_one_upstream(
    redis_server: RedisProcess, nodes: Callable[..., Node], launch: Any
) -> None:
    a, b = (nodes(n, redis_server.url) for n in ("a", "b"))
    page, _ = await publish_simulcast_page(launch, f"{a.url}/publish/sim")
    async with httpx.AsyncClient(timeout=10) as client:

        async def three_layers() -> bool:
            detail = await get(client, f"{a.url}/api/streams/sim")
            video = [t for t in (detail or {}).get("tracks", []) if t["kind"] == "video"]
            return bool(video) and sum(x["active"] for x in video[0]["layers"]) == 3

        await until(three_layers, 20, "the publisher sends three layers")
        viewers = {rid: Viewer(b.url, "sim", layer=rid) for rid in ("l", "h")}
        for viewer in viewers.values():
            assert (await viewer.start(client)).status == 201
        await asyncio.gather(*(v.wait_frames(video=30, timeout=30) for v in viewers.values()))
        assert viewers["l"].video.sizes == {(320, 180)}, viewers["l"].video.sizes
        assert viewers["h"].video.sizes == {(1280, 720)}, viewers["h"].video.sizes
        origin = await get(client, f"{a.url}/api/streams/sim")
        assert origin["viewers"] == 1  # the edge's one upstream
        edge = await get(client, f"{b.url}/api/streams/sim")
        (video,) = [t for t in edge["tracks"] if t["kind"] == "video"]
        assert sorted(x["rid"] for x in video["layers"]) == ["h", "l", "m"]
        for viewer in viewers.values():
            await viewer.stop(client)
    await page.click("#stop")


async def test_only_the_cluster_secret_may_name_relay_hops(make_server: Any) -> None:
    server = await make_server(cluster_secret=SECRET, viewer_token="viewer")
    offer = await _offer()
    sdp = {"Content-Type": "application/sdp"}

    async def post(token: str, hops: str) -> httpx.Response:
        headers = {
            k: v.encode("latin-1")  # the bytes as sent, non-ASCII ones included
            for k, v in (
                sdp | {"Authorization": f"Bearer {token}", "X-Broadcast-Relay-Hops": hops}
            ).items()
        }
        response: httpx.Response = await server.client.post(
            "/whep/cam", content=offer, headers=headers
        )
        return response

    assert (await post(SECRET, "²")).status_code == 400  # a digit, but not an ASCII one
    assert (await post(SECRET, "99")).status_code == 400
    assert (await post("wrong", "0")).status_code == 401
    # The viewer token plays; its hops header is ignored (it is no node of the cluster).
    assert (await post("viewer", "1")).status_code == 201
    # Another node, three hops from the origin: past BROADCAST_RELAY_MAX_DEPTH? Not for a
    # stream this node has; the depth only limits relaying further.
    assert (await post(SECRET, "3")).status_code == 201


async def test_a_publisher_leaving_and_coming_back_reaches_edge_viewers(
    redis_server: RedisProcess, nodes: Callable[..., Node]
) -> None:
    a, b = (nodes(n, redis_server.url) for n in ("a", "b"))
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = await publish(client, a.url)
        viewer = Viewer(b.url, "cam")
        assert (await viewer.start(client)).status == 201
        await viewer.wait_frames(video=30, timeout=30)
        await publisher.stop(client)  # DELETE: the origin keeps the claim for its grace

        async def edge_inactive() -> bool:
            detail = await get(client, f"{b.url}/api/streams/cam")
            return detail is not None and detail["live"] is False

        inactive = await until(edge_inactive, 15, "the edge sees the stream inactive")
        print(f"publisher left: the edge's stream inactive {inactive:.1f} s later")
        again, resumed = await publish_and_resume(client, a.url, viewer)
        print(f"publisher back: the edge viewer decoded 30 new frames {resumed:.1f} s later")
        await viewer.stop(client)
        await again.stop(client)


async def test_edges_pull_from_edges_once_the_origin_feeds_enough(
    redis_server: RedisProcess, nodes: Callable[..., Node]
) -> None:
    # Each node feeds at most one other: a chain a -> b -> c, within the depth limit.
    a, b, c = (nodes(n, redis_server.url, relay_fanout="1") for n in ("a", "b", "c"))
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = await publish(client, a.url)
        first = Viewer(b.url, "cam")
        assert (await first.start(client)).status == 201
        await first.wait_frames(video=30, timeout=30)

        async def records_show_the_relay() -> bool:
            listed = {n["node_id"]: n for n in await get(client, f"{c.url}/api/nodes")}
            return [list(x) for x in listed["a"]["sources"]] == [["cam", 0, 1]] and [
                list(x) for x in listed["b"]["sources"]
            ] == [["cam", 1, 0]]

        await until(records_show_the_relay, 10, "the heartbeats show a feeding b")
        second = Viewer(c.url, "cam")
        assert (await second.start(client)).status == 201
        await second.wait_frames(video=30, timeout=30)
        edge = await get(client, f"{c.url}/api/streams/cam")
        assert (edge["node"], edge["relayed_from"]) == ("a", "b"), edge
        origin = await get(client, f"{a.url}/api/streams/cam")
        assert origin["viewers"] == 1  # only b's upstream
        for viewer in (first, second):
            await viewer.stop(client)
        await publisher.stop(client)
