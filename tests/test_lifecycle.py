"""Sessions end by themselves: never connected, waited too long, publisher gone."""

from __future__ import annotations

import asyncio
import re

from tests.support.peers import Publisher, Viewer, wait_state


def later(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_session_that_never_connects_is_reaped(make_server) -> None:
    server = await make_server(connect_timeout=5)
    viewer = Viewer(server.base_url, "ghost")
    assert (await viewer.start(server.client)).status == 201
    await viewer.pc.close()  # gone before ICE completes, and no DELETE
    (session,) = server.hub.sessions.values()
    if session.connected_at is None:
        server.hub.expire(later(1))
        assert session.id in server.hub.sessions  # not yet: 5 s have not passed
        server.hub.expire(later(6))
    assert session.id not in server.hub.sessions
    assert server.hub.streams == {} or not server.hub.streams["ghost"].subscriptions


async def test_waiting_viewer_expires_after_wait_timeout(make_server) -> None:
    server = await make_server(wait_timeout=30, publisher_grace=0)
    viewer = Viewer(server.base_url, "later")
    assert (await viewer.start(server.client)).status == 201
    (session,) = server.hub.sessions.values()
    await asyncio.wait_for(session.connected.wait(), 10)
    server.hub.expire(later(10))
    assert not session.ended  # still within BROADCAST_WAIT_TIMEOUT
    server.hub.expire(later(31))
    assert session.ended and session.end_reason is not None
    assert "WAIT_TIMEOUT" in session.end_reason
    # The server closed its side: DTLS close_notify reaches the viewer.
    assert await wait_state(viewer.pc, {"closed", "failed"}) in {"closed", "failed"}
    assert server.hub.streams == {}
    await viewer.stop()


async def test_stream_is_released_after_the_publisher_grace(make_server) -> None:
    server = await make_server(publisher_grace=20)
    publisher = Publisher(server.base_url, "grace")
    assert (await publisher.start(server.client)).status == 201
    assert await server.hub.registry.lookup("grace") == "test-node"
    await publisher.stop(server.client)
    server.hub.expire(later(5))
    assert "grace" in server.hub.streams  # kept for a returning publisher
    server.hub.expire(later(25))
    assert "grace" not in server.hub.streams
    await asyncio.sleep(0)  # let the release task run
    assert await server.hub.registry.lookup("grace") is None


async def test_concurrent_publishers_one_wins(server) -> None:
    first = Publisher(server.base_url, "race")
    second = Publisher(server.base_url, "race")
    results = await asyncio.gather(first.start(server.client), second.start(server.client))
    assert sorted(r.status for r in results) == [201, 409]
    assert len([s for s in server.hub.sessions.values() if s.role == "whip"]) == 1
    await first.stop(server.client)
    await second.stop(server.client)


async def test_failed_negotiation_leaves_no_publisher(server) -> None:
    publisher = Publisher(server.base_url, "bad")
    # Well-formed, but no video codec in common: aiortc refuses it during negotiation.
    broken = await publisher.start(
        server.client,
        munge=lambda sdp: re.sub(r"(a=rtpmap:\d+) (VP8|H264|VP9|AV1)/", r"\1 FOO/", sdp),
    )
    assert broken.status == 422, broken.answer
    assert "negotiated" in broken.answer
    retry = Publisher(server.base_url, "bad")
    assert (await retry.start(server.client)).status == 201
    await publisher.stop(server.client)
    await retry.stop(server.client)


async def test_viewers_go_once_their_publisher_stays_away_past_the_grace(make_server) -> None:
    server = await make_server(publisher_grace=5)
    publisher = Publisher(server.base_url, "gone")
    assert (await publisher.start(server.client)).status == 201
    viewer = Viewer(server.base_url, "gone")
    assert (await viewer.start(server.client)).status == 201
    await viewer.wait_frames(video=5, timeout=10)
    session = server.hub.viewers_of(server.hub.streams["gone"])[0]
    await publisher.stop(server.client)
    server.hub.expire(later(2))
    assert not session.ended  # still waiting for its publisher to come back
    server.hub.expire(later(8))
    assert session.ended and session.end_reason == "the publisher left and did not come back"
    # A viewer that joins a stream nobody publishes waits BROADCAST_WAIT_TIMEOUT instead.
    waiting = Viewer(server.base_url, "gone")
    assert (await waiting.start(server.client)).status == 201
    server.hub.expire(later(8))  # past the grace, within the connect and wait timeouts
    assert len(server.hub.viewers_of(server.hub.streams["gone"])) == 1
    await waiting.stop(server.client)
    await viewer.stop()
