"""/metrics: read from the hub at scrape time, so nothing is counted twice on the hot
path. Labels stay bounded (role, kind, direction, reason, layer): per-session numbers are in
/api/streams/{stream}. Counters add what live sessions and streams did to the totals of
those that ended (`broadcast.media.ledger`), so they never go back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from broadcast.media.datachannels import DROP_REASONS
from broadcast.media.hub import Hub
from broadcast.media.viewer import ViewerSession

__all__ = ["HubCollector", "LoopLag"]

LAG_INTERVAL = 0.25  # seconds between event-loop lag probes


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


class LoopLag:
    """How late the event loop wakes a task up: every packet of every viewer waits that
    long too (a busy or blocked loop is jitter for everyone)."""

    def __init__(self) -> None:
        self.histogram = Histogram(
            "broadcast_event_loop_lag_seconds",
            "How much later than asked the event loop ran a sleeping task",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=None,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._probe())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            self.histogram.observe(max(0.0, loop.time() - asked - LAG_INTERVAL))


class HubCollector(Collector):
    """Reads the hub at scrape time, so nothing is counted twice on the hot path."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub, ended = self.hub, self.hub.ledger.ended
        streams = GaugeMetricFamily("broadcast_streams", "Streams with a live publisher")
        streams.add_metric([], len(hub.live_streams()))
        sessions = GaugeMetricFamily("broadcast_sessions", "Open sessions", labels=["role"])
        for role in ("whip", "whep"):
            sessions.add_metric([role], sum(s.role == role for s in hub.sessions.values()))
        viewers = [s for s in hub.sessions.values() if isinstance(s, ViewerSession)]
        yield from (streams, sessions, _gauge("broadcast_viewers", "Viewer sessions", len(viewers)))

        packets = CounterMetricFamily(
            "broadcast_ingress_packets", "RTP packets received from publishers", labels=["kind"]
        )
        octets = CounterMetricFamily(
            "broadcast_ingress_bytes", "RTP payload bytes received from publishers", labels=["kind"]
        )
        for kind in ("audio", "video"):
            feeds = [f for s in hub.streams.values() for f in s.track_feeds(kind)]
            packets.add_metric([kind], ended.ingress_packets[kind] + sum(f.packets for f in feeds))
            octets.add_metric([kind], ended.ingress_octets[kind] + sum(f.octets for f in feeds))
        yield from (packets, octets)

        downtracks = [d for s in viewers for d in s.downtracks.values()]
        live_feeds = [f for s in hub.streams.values() for k in s.feeds for f in s.track_feeds(k)]

        def total(name: str) -> int:
            return sum(getattr(d, name) for d in downtracks)

        yield from (
            _counter(
                "broadcast_egress_packets",
                "RTP packets sent to viewers",
                ended.egress_packets + total("packets"),
            ),
            _counter(
                "broadcast_egress_bytes",
                "RTP payload bytes sent to viewers",
                hub.egress_octets(),
            ),
            _counter(
                "broadcast_nacks",
                "NACK requests received from viewers",
                ended.nacks + total("nacks"),
            ),
            _counter(
                "broadcast_retransmits",
                "Packets resent to viewers (answering NACKs)",
                ended.retransmits + total("retransmits"),
            ),
        )
        plis = CounterMetricFamily(
            "broadcast_plis",
            "Keyframe requests (PLI/FIR): in from viewers, out to publishers",
            labels=["direction"],
        )
        plis.add_metric(["in"], ended.plis_in + total("plis"))
        plis.add_metric(["out"], ended.plis_out + sum(f.keyframe_requests for f in live_feeds))
        yield plis
        yield _gauge(
            "broadcast_cpu_ratio",
            "CPU this process used over the last heartbeat interval (1.0 = one core)",
            hub.cluster.cpu,
        )
        yield _gauge(
            "broadcast_relay_upstreams",
            "Streams this node relays from another (origin) node",
            len(hub.relay.upstreams),
        )
        yield _gauge(
            "broadcast_registry_up",
            "1 while the stream registry answered the last heartbeat",
            int(hub.cluster.available),
        )
        yield from self._viewer_layers()
        yield from self._data_and_recording()

    def _data_and_recording(self) -> Iterator[Metric]:
        hub, ended = self.hub, self.hub.ledger.ended
        hubs = [s.data for s in hub.streams.values() if s.data is not None]
        messages = CounterMetricFamily(
            "broadcast_data_messages",
            "Data channel messages: in from publishers and viewers, out to them",
            labels=["direction"],
        )
        messages.add_metric(["in"], ended.data_messages["in"] + sum(d.messages_in for d in hubs))
        messages.add_metric(["out"], ended.data_messages["out"] + sum(d.messages_out for d in hubs))
        dropped = CounterMetricFamily(
            "broadcast_data_dropped",
            "Data channel messages dropped: size, rate, buffer, viewer_disallowed, no_publisher",
            labels=["reason"],
        )
        for reason in DROP_REASONS:
            live = sum(d.dropped.get(reason, 0) for d in hubs)
            dropped.add_metric([reason], ended.data_dropped.get(reason, 0) + live)
        recordings = hub.recordings
        yield from (
            messages,
            dropped,
            _gauge("broadcast_recordings", "Streams being recorded", len(recordings.active)),
            _counter(
                "broadcast_recording_bytes",
                "Bytes of coded media written to recordings",
                recordings.bytes_written(),
            ),
            _counter(
                "broadcast_recording_frames_dropped",
                "Frames left out of recordings (loss, damage, or a disk too slow)",
                recordings.frames_dropped(),
            ),
        )

    def _viewer_layers(self) -> Iterator[GaugeMetricFamily | GaugeHistogramMetricFamily]:
        """Which layer viewers receive and what the ABR policy estimates their links carry.

        Aggregates only (labels stay bounded): each viewer's own values are in
        /api/streams/{stream}.
        """
        layers = GaugeMetricFamily(
            "broadcast_viewer_layers",
            "Viewers by the simulcast layer (rid) they receive; none: not simulcast",
            labels=["layer"],
        )
        counts: dict[str, int] = {}
        estimates: list[float] = []
        for session in self.hub.sessions.values():
            if not isinstance(session, ViewerSession):
                continue
            video = session.downtracks.get("video")
            if video is None:
                continue
            rid = video.source.rid if video.source is not None else None
            counts[rid or "none"] = counts.get(rid or "none", 0) + 1
            if session.abr.estimate is not None:
                estimates.append(session.abr.estimate)
        for rid, count in sorted(counts.items()):
            layers.add_metric([rid], count)
        buckets = [(_bucket_label(b), sum(e <= b for e in estimates)) for b in ESTIMATE_BUCKETS]
        yield layers
        yield GaugeHistogramMetricFamily(
            "broadcast_viewer_estimate_bps",
            "Viewers' link estimates held by the ABR policy (viewers that met congestion)",
            buckets=[*buckets, ("+Inf", len(estimates))],
            gsum_value=sum(estimates),
        )


# Bit/s: the bitrates that separate common simulcast layers.
ESTIMATE_BUCKETS = (150e3, 300e3, 500e3, 1e6, 1.5e6, 2.5e6, 4e6, 8e6)


def _bucket_label(bound: float) -> str:
    return f"{bound:.0f}"
