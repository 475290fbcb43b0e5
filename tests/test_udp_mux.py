"""One UDP port for all media (BROADCAST_UDP_PORT) and NAT 1:1 addresses (PUBLIC_IPS).

Real `broadcast serve` processes; aiortc publishers and viewers in this process, which
gather as aioice always does (the mux applies to server connections only).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.nodes import Node, nodes
from tests.support.peers import Publisher, Viewer
from tests.test_cluster import _offer, until
from tests.test_workers import worker_pids

__all__ = ["nodes"]

pytestmark = pytest.mark.timeout(180)

CANDIDATE = re.compile(r"^a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ (\w+)", re.M)


def free_udp_ports(count: int) -> int:
    """The first of `count` consecutive port numbers free for UDP and TCP (ICE-TCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        held = []
        try:
            for port in range(first, first + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    held.append(sock)
                    sock.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return first
    raise RuntimeError("no free UDP ports")


def udp_ports_of(pid: int) -> list[int]:
    """Local ports of the UDP sockets process `pid` holds (from /proc, IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def candidates(answer: str) -> list[tuple[str, int, str]]:
    return [(h, int(p), t) for h, p, t in CANDIDATE.findall(answer)]


async def test_fifty_viewers_and_a_publisher_share_one_udp_socket(
    nodes: Callable[..., Node],
) -> None:
    port = free_udp_ports(1)
    node = nodes("n", None, udp_port=str(port))
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = Publisher(node.url, "cam", size=(320, 180))
        published = await publisher.start(client)
        assert published.status == 201
        assert set(candidates(published.answer)) == {("127.0.0.1", port, "host")}
        viewers = [Viewer(node.url, "cam") for _ in range(50)]
        for viewer in viewers:
            result = await viewer.start(client)
            assert result.status == 201, result.answer
            assert {c[:2] for c in candidates(result.answer)} == {("127.0.0.1", port)}
        await asyncio.gather(*(v.wait_frames(video=10, timeout=60) for v in viewers))
        # Every viewer decoded frames, and the server holds exactly one UDP socket.
        assert udp_ports_of(node.process.pid) == [port]
        await asyncio.gather(*(v.stop(client) for v in viewers))
        await publisher.stop(client)


async def test_each_worker_has_its_own_media_port(nodes: Callable[..., Node]) -> None:
    port = free_udp_ports(2)
    node = nodes("n", None, workers=2, udp_port=str(port))
    async with httpx.AsyncClient(timeout=10) as client:

        async def both_up() -> bool:
            listed = (await client.get(f"{node.url}/api/nodes")).json()
            return len(listed) == 2

        await until(both_up, 15, "both workers up")
        publisher = Publisher(node.private_url(0), "cam", size=(320, 180))
        assert (await publisher.start(client)).status == 201
        viewer = Viewer(node.private_url(1), "cam")  # relayed from worker 0 over the mux
        result = await viewer.start(client)
        assert {c[:2] for c in candidates(result.answer or "")} == {("127.0.0.1", port + 1)}
        await viewer.wait_frames(video=10, timeout=30)
        held = sorted(p for pid in worker_pids(node.process.pid) for p in udp_ports_of(pid))
        assert held == [port, port + 1]
        await viewer.stop(client)
        await publisher.stop(client)


async def test_public_ips_are_advertised_with_and_without_the_mux(
    nodes: Callable[..., Node],
) -> None:
    port = free_udp_ports(1)
    muxed = nodes("m", None, udp_port=str(port), public_ips="203.0.113.7")
    plain = nodes("p", None, public_ips="203.0.113.9")
    offer = await _offer()
    async with httpx.AsyncClient(timeout=10) as client:
        for node, expected in ((muxed, "203.0.113.7"), (plain, "203.0.113.9")):
            response = await client.post(
                f"{node.url}/whep/cam", content=offer, headers={"Content-Type": "application/sdp"}
            )
            assert response.status_code == 201, response.text
            found = candidates(response.text)
            assert found and {host for host, _, _ in found} == {expected}, response.text
            if node is muxed:
                assert {p for _, p, _ in found} == {port}
            assert f"c=IN IP4 {expected}" in response.text
            await client.delete(node.url + response.headers["location"])
