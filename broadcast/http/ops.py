"""Operational endpoints: health, readiness, metrics, the stream API and the index page."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broadcast.config import Settings
from broadcast.errors import BroadcastError, NotFound
from broadcast.http.common import cors_headers, problem_response, stream_name
from broadcast.media.hub import Hub
from broadcast.sfu.feed import TrackFeed
from broadcast.sfu.stream import Stream

__all__ = ["Ops"]


class HubCollector(Collector):
    """Reads the hub at scrape time, so nothing is counted twice on the hot path."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        streams = GaugeMetricFamily("broadcast_streams", "Streams with a live publisher")
        streams.add_metric([], len(self.hub.live_streams()))
        sessions = GaugeMetricFamily("broadcast_sessions", "Open sessions", labels=["role"])
        for role in ("whip", "whep"):
            sessions.add_metric([role], sum(s.role == role for s in self.hub.sessions.values()))
        ingest = CounterMetricFamily(
            "broadcast_ingest_packets", "RTP packets received from publishers", labels=["kind"]
        )
        for kind in ("audio", "video"):
            packets = sum(f.packets for s in self.hub.streams.values() for f in s.track_feeds(kind))
            ingest.add_metric([kind], packets)
        yield from (streams, sessions, ingest)


class Ops:
    def __init__(self, hub: Hub, settings: Settings) -> None:
        self.hub = hub
        self.settings = settings
        self.node_id = settings.node_id
        self.ready = True
        self.registry = CollectorRegistry()
        self.registry.register(HubCollector(hub))
        self.registry.register(hub.forward_delay)
        # process_cpu_seconds_total, process_resident_memory_bytes: what load tests read.
        ProcessCollector(registry=self.registry)
        self._samples: weakref.WeakKeyDictionary[TrackFeed, tuple[float, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._started = time.monotonic()

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
            Route("/readyz", self.readyz, methods=["GET", "HEAD"]),
            Route("/metrics", self.metrics, methods=["GET", "HEAD"]),
            Route("/api/streams", self.streams, methods=["GET", "HEAD"]),
            Route("/api/streams/{stream}", self.stream, methods=["GET", "HEAD"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "draining"}, status_code=503)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def streams(self, request: Request) -> Response:
        body = [self.describe(s) for s in self.hub.live_streams()]
        return JSONResponse(body, headers=self._cors(request))

    def _cors(self, request: Request) -> dict[str, str]:
        # Players embedded on other origins read the viewer count here.
        return cors_headers(request, self.settings, methods="GET, HEAD")

    async def stream(self, request: Request) -> Response:
        try:
            name = stream_name(request.path_params["stream"])
            stream = self.hub.streams.get(name)
            if stream is None:
                raise NotFound(f"no stream {name!r} on this node")
        except BroadcastError as error:
            response = problem_response(error, request.url.path)
            response.headers.update(self._cors(request))
            return response
        body = self.describe(stream)
        body["viewer_sessions"] = [v.stats() for v in self.hub.viewers_of(stream)]
        return JSONResponse(body, headers=self._cors(request))

    def _bitrate(self, feed: TrackFeed) -> int:
        """Ingest bit/s since this feed was last described (or since it started)."""
        now = time.monotonic()
        then, octets = self._samples.get(feed, (self._started, 0))
        self._samples[feed] = (now, feed.octets)
        elapsed = now - then
        return round((feed.octets - octets) * 8 / elapsed) if elapsed > 0 else 0

    def _layer(self, feed: TrackFeed, now: float) -> dict[str, object]:
        layer: dict[str, object] = {
            "rid": feed.rid,
            "bitrate": self._bitrate(feed),
            "active": feed.sending(now),
        }
        if feed.dimensions is not None:
            layer["width"], layer["height"] = feed.dimensions
        return layer

    def describe(self, stream: Stream) -> dict[str, object]:
        publisher = stream.publisher
        tracks: list[dict[str, object]] = []
        now = asyncio.get_event_loop().time()
        for kind in stream.feeds:
            feeds = [f for f in stream.track_feeds(kind) if f.codecs]
            if not feeds:
                continue
            tracks.append(
                {
                    "kind": kind,
                    "codec": next((f.active_codec for f in feeds if f.last_pt is not None), None)
                    or feeds[0].active_codec,
                    "layers": [self._layer(feed, now) for feed in feeds],
                    "packets": sum(f.packets for f in feeds),
                    "bytes": sum(f.octets for f in feeds),
                    "keyframes": sum(f.keyframes for f in feeds),
                    "keyframe_requests": sum(f.keyframe_requests for f in feeds),
                }
            )
        return {
            "stream": stream.name,
            "node": self.node_id,
            "live": stream.live,
            "publisher": getattr(publisher, "id", None),
            "viewers": stream.viewer_count,
            "tracks": tracks,
            "started_at": stream.live_since,
        }
