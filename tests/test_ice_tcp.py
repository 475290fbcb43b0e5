"""ICE over TCP (RFC 6544) on the media port: Chromium plays with no UDP path at all.

The test removes every UDP candidate from the WHEP answer Chromium receives, so its only
way to the server is the passive TCP candidate on BROADCAST_UDP_PORT's number.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from tests.support.peers import Publisher
from tests.test_player import Problems, launch, wait_frames
from tests.test_udp_mux import free_udp_ports

__all__ = ["launch"]

pytestmark = pytest.mark.timeout(120)

UDP_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp .*\r?\n", re.M | re.I)


async def test_chromium_plays_over_ice_tcp_when_udp_is_blocked(
    make_server: Any, launch: Any
) -> None:
    port = free_udp_ports(1)  # free for TCP too
    server = await make_server(udp_port=port)
    publisher = Publisher(server.base_url, "cam")
    published = await publisher.start(server.client)
    assert published.status == 201
    assert f"127.0.0.1 {port} typ host tcptype passive" in (published.answer or "")

    browser = await launch([])
    page = await (await browser.new_context()).new_page()
    problems = Problems(page)
    stripped: list[int] = []

    async def udp_blocked(route: Any) -> None:
        # Neither side learns a UDP candidate of the other: not in the offer, not in the
        # trickled ones (PATCH), not in the answer.
        request = route.request
        sent = request.post_data
        if request.method in ("POST", "PATCH") and sent:
            sent = UDP_CANDIDATE.sub("", sent)
        response = await route.fetch(post_data=sent)
        body = await response.text()
        if request.method == "POST" and response.status == 201:
            stripped.append(len(UDP_CANDIDATE.findall(body)))
            body = UDP_CANDIDATE.sub("", body)
        await route.fulfill(response=response, body=body)

    await page.route(re.compile(r"/whep/cam(/[^/]+)?(\?.*)?$"), udp_blocked)
    await page.goto(f"{server.base_url}/watch/cam")
    await wait_frames(page, 30, 20)
    assert stripped and stripped[0] > 0  # the answer had UDP candidates, and lost them
    mux = server.hub.gathering
    assert mux.tcp.clients == 1  # the viewer's media comes over one TCP connection

    await page.close()
    for _ in range(100):  # the server sees the TCP connection close (bounded wait)
        if mux.tcp.clients == 0:
            break
        await asyncio.sleep(0.05)
    assert mux.tcp.clients == 0
    await publisher.stop(server.client)
    assert problems.items == []
