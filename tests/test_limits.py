"""Limits: request rates per client address (429), capacity and handshakes (503)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcast.http import ratelimit
from broadcast.http.ratelimit import RateLimit
from tests.support.peers import Publisher, Viewer
from tests.test_cluster import _offer

SDP = {"Content-Type": "application/sdp"}


async def test_rate_limit_per_client_address(make_server: Any) -> None:
    server = await make_server(rate_limit=1, rate_burst=3, trusted_proxies=["127.0.0.1"])
    a, b = {"X-Forwarded-For": "198.51.100.1"}, {"X-Forwarded-For": "198.51.100.2"}
    for _ in range(3):
        answer = await server.client.post("/whep/cam", content=b"v=0", headers=SDP | a)
        assert answer.status_code == 400, answer.text  # admitted, then the offer is refused
    limited = await server.client.post("/whep/cam", content=b"v=0", headers=SDP | a)
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["content-type"] == "application/problem+json"
    # Another client, and reads, are not affected.
    other = await server.client.post("/whep/cam", content=b"v=0", headers=SDP | b)
    assert other.status_code == 400
    assert (await server.client.get("/api/streams", headers=a)).status_code == 200
    assert (await server.client.options("/whep/cam", headers=a)).status_code == 200


async def test_relay_sessions_are_not_rate_limited(make_server: Any) -> None:
    server = await make_server(rate_limit=1, rate_burst=1, cluster_secret="cluster-secret-1")
    relay = SDP | {"Authorization": "Bearer cluster-secret-1"}
    for _ in range(5):
        answer = await server.client.post("/whep/cam", content=b"v=0", headers=relay)
        assert answer.status_code == 400, answer.text


def test_buckets_refill_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    limiter = RateLimit(
        lambda *a: None,  # type: ignore[arg-type, return-value]
        rate=2,
        burst=2,
        trusted_proxies=[],
        clock=lambda: now[0],
    )
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("a") == 0
    monkeypatch.setattr(ratelimit, "MAX_CLIENTS", 100)
    for i in range(1000):
        limiter.take(f"client-{i}")
    assert len(limiter.buckets) == 100


@given(st.lists(st.text(max_size=50), max_size=5))
def test_any_forwarded_header_names_a_client(values: list[str]) -> None:
    limiter = RateLimit(
        lambda *a: None,  # type: ignore[arg-type, return-value]
        rate=1,
        burst=1,
        trusted_proxies=["10.0.0.1"],
    )
    headers = [(b"x-forwarded-for", v.encode("utf-8", "replace")) for v in values]
    scope = {"client": ("10.0.0.1", 1234), "server": ("10.0.0.9", 80), "headers": headers}
    assert isinstance(limiter.client(scope), str)


async def test_capacity_limits_answer_503(make_server: Any) -> None:
    server = await make_server(max_publishers=1, max_viewers_per_stream=1)
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = Publisher(server.base_url, "cam")
        assert (await publisher.start(client)).status == 201
        second = Publisher(server.base_url, "other")
        full = await second.start(client)
        await second.stop()
        assert full.status == 503 and full.headers["retry-after"] == "30"
        viewer = Viewer(server.base_url, "cam")
        assert (await viewer.start(client)).status == 201
        crowd = await client.post(
            f"{server.base_url}/whep/cam", content=await _offer(), headers=SDP
        )
        assert crowd.status_code == 503, crowd.text
        assert crowd.headers["retry-after"] == "10"
        assert "at most 1 viewers" in crowd.json()["detail"]
        await viewer.stop(client)
        await publisher.stop(client)


async def test_too_many_handshakes_at_once_answer_503(make_server: Any) -> None:
    server = await make_server(max_handshakes=1)
    # This offer's peer is closed: its session stays "connecting" until the timeout.
    first = await server.client.post("/whep/cam", content=await _offer(), headers=SDP)
    assert first.status_code == 201
    busy = await server.client.post("/whep/cam", content=await _offer(), headers=SDP)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    await server.client.delete(first.headers["location"])
    again = await server.client.post("/whep/cam", content=await _offer(), headers=SDP)
    assert again.status_code == 201
