"""BROADCAST_WORKERS=2: two worker processes behind one port, with and without Redis.

A real `broadcast serve` process; aiortc publisher and viewers in this process. Worker i
also listens on `port + 1 + i`, which lets a test put a peer on a chosen worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.nodes import Node, nodes
from tests.support.peers import Publisher, Viewer
from tests.support.redisproc import RedisProcess, redis_server
from tests.test_cluster import _offer, get, publish, until

__all__ = ["nodes", "redis_server"]

pytestmark = pytest.mark.timeout(120)


async def worker_count(client: httpx.AsyncClient, node: Node) -> int:
    listed = await get(client, f"{node.url}/api/nodes")
    return len(listed or [])


async def test_two_workers_share_one_port_and_relay_in_node(
    nodes: Callable[..., Node],
) -> None:
    node = nodes("n", None, workers=2)
    w0, w1 = node.private_url(0), node.private_url(1)
    async with httpx.AsyncClient(timeout=10) as client:

        async def both_up() -> bool:
            return await worker_count(client, node) == 2

        await until(both_up, 15, "both workers in the registry")
        publisher = await publish(client, w0)
        # Two viewers on the worker without the stream, one on its worker, three wherever
        # the kernel puts them (a fresh connection each).
        viewers = [Viewer(url, "cam") for url in (w1, w1, w0)]
        viewers += [Viewer(node.url, "cam") for _ in range(3)]
        for viewer in viewers:
            async with httpx.AsyncClient(timeout=10) as fresh:
                result = await viewer.start(fresh)
            assert result.status == 201, result.answer
            assert result.location is not None
        await asyncio.gather(*(v.wait_frames(video=30, audio=20, timeout=30) for v in viewers))

        # Worker 1 relays the stream from worker 0 over one upstream session.
        relayed = await get(client, f"{w1}/api/streams/cam")
        assert relayed["relayed"] is True and relayed["node"] == "n-w0", relayed
        on_w1 = [v for v in viewers if v.result and v.result.location.split("/")[3][:2] == "1."]
        assert relayed["viewers"] == len(on_w1) >= 2
        assert "broadcast_relay_upstreams 1.0" in (await client.get(f"{w1}/metrics")).text
        origin = await get(client, f"{w0}/api/streams/cam")
        assert origin["relayed"] is False
        assert origin["viewers"] == len(viewers) - len(on_w1) + 1  # + worker 1's upstream

        # The public port answers about the stream from its origin worker, every time.
        for _ in range(4):
            async with httpx.AsyncClient(timeout=10) as fresh:
                assert (await get(fresh, f"{node.url}/api/streams/cam"))["relayed"] is False

        # One publisher per stream across the workers.
        second = Publisher(w1, "cam")
        assert (await second.start(client)).status == 409
        await second.stop()

        # Server-sent events of a worker-1 session, subscribed and read through the port.
        location = node.url + on_w1[0].result.location  # type: ignore[union-attr]
        async with httpx.AsyncClient(timeout=10) as fresh:
            subscribed = await fresh.post(f"{location}/sse", json=["viewercount"])
        assert subscribed.status_code == 201, subscribed.text
        async with (
            httpx.AsyncClient(timeout=10) as fresh,
            fresh.stream("GET", node.url + subscribed.headers["location"]) as events,
        ):
            assert events.status_code == 200
            lines = events.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 5)
            assert first == "event: viewercount", first

        # /metrics on the port: every worker's samples, labelled, in one valid exposition.
        text = (await client.get(f"{node.url}/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        up = {s.labels["worker"]: s.value for s in families["broadcast_workers_up"].samples}
        assert up == {"0": 1.0, "1": 1.0}
        workers = {s.labels.get("worker") for s in families["broadcast_sessions"].samples}
        assert workers == {"0", "1"}, text

        # Each session is deleted through the public port, whichever worker the kernel
        # hands the connection to: it reaches the worker that holds the session.
        for viewer in viewers:
            async with httpx.AsyncClient(timeout=10) as fresh:
                deleted = await fresh.delete(node.url + viewer.result.location)  # type: ignore[union-attr]
            assert deleted.status_code == 200, deleted.text
            await viewer.stop()
        assert (await get(client, f"{w1}/api/streams/cam"))["viewers"] == 0
        await publisher.stop(client)


async def test_sessions_spread_over_workers_on_one_kept_alive_client(
    nodes: Callable[..., Node],
) -> None:
    """A proxy or load tool that keeps one connection alive still reaches both workers:
    each POST's answer closes its connection (16 joins on one worker: odds 1 in 32768)."""
    node = nodes("n", None, workers=2)
    async with httpx.AsyncClient(timeout=10) as client:

        async def both_up() -> bool:
            return await worker_count(client, node) == 2

        await until(both_up, 15, "both workers in the registry")
        offer = await _offer()
        locations = []
        for _ in range(16):
            response = await client.post(
                f"{node.url}/whep/cam", content=offer, headers={"Content-Type": "application/sdp"}
            )
            assert response.status_code == 201, response.text
            assert response.headers["connection"] == "close"
            locations.append(response.headers["location"])
        assert {location.split("/")[3][:2] for location in locations} == {"0.", "1."}
        for location in locations:
            assert (await client.delete(node.url + location)).status_code == 200


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's spawned workers (not multiprocessing's resource tracker)."""
    text = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    out = []
    for pid in map(int, text.split()):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            out.append(pid)
    return out


async def test_dead_workers_are_replaced_and_sigterm_stops_them_all(
    nodes: Callable[..., Node],
) -> None:
    node = nodes("n", None, workers=2)
    async with httpx.AsyncClient(timeout=10) as client:

        async def both_up() -> bool:
            return await worker_count(client, node) == 2

        await until(both_up, 15, "both workers in the registry")
        publisher = await publish(client, node.url)
        killed = worker_pids(node.process.pid)
        assert len(killed) == 2
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

        async def replaced() -> bool:
            pids = worker_pids(node.process.pid)
            if len(pids) != 2 or set(pids) & set(killed):
                return False
            for index in (0, 1):
                try:
                    answer = await client.get(f"{node.private_url(index)}/healthz", timeout=1)
                except httpx.HTTPError:
                    return False
                if answer.status_code != 200:
                    return False
            return True

        await until(replaced, 20, "both workers restarted")
        # The dead worker's claim went with it (not TTL seconds later): the stream can be
        # published again at once.
        await publisher.stop()
        again = await publish(client, node.url)
        await again.stop(client)

    running = worker_pids(node.process.pid)
    node.process.send_signal(signal.SIGTERM)
    assert node.process.wait(15) == 0
    assert [pid for pid in running if Path(f"/proc/{pid}").exists()] == []


async def test_workers_are_members_of_a_redis_cluster(
    redis_server: RedisProcess, nodes: Callable[..., Node]
) -> None:
    """With Redis, each worker is a cluster member reachable on its own port: a node
    relays a stream straight from the worker its publisher is on."""
    a = nodes("a", redis_server.url, workers=2)
    b = nodes("b", redis_server.url)
    async with httpx.AsyncClient(timeout=10) as client:

        async def all_up() -> bool:
            listed = await get(client, f"{b.url}/api/nodes")
            return sorted(n["node_id"] for n in listed or []) == ["a-w0", "a-w1", "b"]

        await until(all_up, 15, "both workers and b in the registry")
        listed = {n["node_id"]: n["url"] for n in await get(client, f"{b.url}/api/nodes")}
        assert listed["a-w1"] == a.private_url(1)
        publisher = await publish(client, a.private_url(1))
        viewer = Viewer(b.url, "cam")
        assert (await viewer.start(client)).status == 201
        await viewer.wait_frames(video=30, timeout=30)
        detail = await get(client, f"{b.url}/api/streams/cam")
        assert detail["relayed"] is True and detail["relayed_from"] == "a-w1", detail
        await viewer.stop(client)
        await publisher.stop(client)
