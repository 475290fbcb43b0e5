"""/metrics: valid Prometheus text, and the counters move as media flows (real peers)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer
from tests.support.peers import Publisher, Viewer

ROOT = Path(__file__).resolve().parent.parent


async def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value, from a parse of /metrics."""
    response = await server.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_counters_move_as_media_flows(server: RunningServer) -> None:
    before = await scrape(server)
    assert value(before, "broadcast_joins_total", role="whep") == 0
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(
            f"{server.base_url}/whep/cam", content=b"v=0", headers={"Content-Type": "text/plain"}
        )
        assert refused.status_code == 415
        publisher = Publisher(server.base_url, "cam")
        assert (await publisher.start(client)).status == 201
        viewer = Viewer(server.base_url, "cam")
        assert (await viewer.start(client)).status == 201
        await viewer.wait_frames(video=30, audio=20, timeout=20)
        live = await scrape(server)
        await viewer.wait_frames(video=60, audio=40, timeout=20)
        later = await scrape(server)

        for kind in ("audio", "video"):
            assert (
                0
                < value(live, "broadcast_ingress_packets_total", kind=kind)
                < value(later, "broadcast_ingress_packets_total", kind=kind)
            )
            assert value(later, "broadcast_ingress_bytes_total", kind=kind) > 0
        for name in ("broadcast_egress_packets_total", "broadcast_egress_bytes_total"):
            assert 0 < value(live, name) < value(later, name)
        assert value(later, "broadcast_joins_total", role="whep") == 1
        assert value(later, "broadcast_joins_total", role="whip") == 1
        assert value(later, "broadcast_join_seconds_count", role="whep") == 1
        assert value(later, "broadcast_join_seconds_sum", role="whep") < 5
        failures = ("broadcast_join_failures_total",)
        assert value(later, *failures, role="whep", reason="unsupported_media_type") == 1
        assert value(later, "broadcast_viewers") == 1
        assert value(later, "broadcast_sessions", role="whip") == 1
        assert value(later, "broadcast_streams") == 1
        assert value(later, "broadcast_event_loop_lag_seconds_count") > 0
        assert value(later, "broadcast_plis_total", direction="out") >= 0
        assert ("broadcast_cpu_ratio", ()) in later
        # Every series the Grafana dashboard and the autoscaler query is really served.
        served = {name for name, _ in later}
        for path in ("k8s/grafana-dashboard.json", "k8s/monitoring/prometheus-adapter-rules.yaml"):
            queried = set(re.findall(r"broadcast_[a-z_]+", (ROOT / path).read_text()))
            assert queried and queried <= served, (path, queried - served)

        sent = value(later, "broadcast_egress_packets_total")
        await viewer.stop(client)  # the DELETE's answer comes after the session ended
        after = await scrape(server)
        # The viewer's session ended: its packets stay counted.
        assert value(after, "broadcast_egress_packets_total") >= sent
        assert value(after, "broadcast_viewers") == 0
        await publisher.stop(client)
