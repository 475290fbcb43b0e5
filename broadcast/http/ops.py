"""Operational endpoints: health, readiness, metrics, the stream API and the index page."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broadcast.config import Settings
from broadcast.errors import BroadcastError, NotFound
from broadcast.http.common import cors_headers, problem_response, stream_name
from broadcast.http.metrics import HubCollector, LoopLag
from broadcast.media.hub import Hub
from broadcast.media.relay import UpstreamSession
from broadcast.registry.base import RegistryUnavailable
from broadcast.sfu.feed import TrackFeed
from broadcast.sfu.stream import Stream

__all__ = ["Ops"]


class Ops:
    def __init__(self, hub: Hub, settings: Settings) -> None:
        self.hub = hub
        self.settings = settings
        self.node_id = settings.node_id
        self.ready = True
        self.registry = CollectorRegistry()
        self.registry.register(HubCollector(hub))
        self.loop_lag = LoopLag()
        for collector in (
            hub.forward_delay,
            hub.layer_switches,
            hub.ledger.joins,
            hub.ledger.join_failures,
            hub.ledger.join_seconds,
            self.loop_lag.histogram,
        ):
            self.registry.register(collector)
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
            Route("/api/nodes", self.nodes, methods=["GET", "HEAD"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        # An unreachable registry keeps the node ready: its local streams still flow, and
        # every node would be unready at once. It is reported for operators and probes.
        registry = "ok" if self.hub.cluster.available else "unavailable"
        if self.ready:
            return JSONResponse({"status": "ready", "registry": registry})
        return JSONResponse({"status": "draining", "registry": registry}, status_code=503)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def streams(self, request: Request) -> Response:
        """Live streams cluster-wide: this node's in full, other nodes' from the registry."""
        body = [self.describe(s) for s in self.hub.live_streams()]
        here = {s["stream"] for s in body}
        try:
            remote = await self.hub.registry.streams()
        except RegistryUnavailable:
            remote = []
        for info in remote:
            if info.stream not in here and info.node != self.node_id:
                body.append(
                    {
                        "stream": info.stream,
                        "node": info.node,
                        "live": True,
                        "viewers": None,
                        "tracks": [{"codec": codec} for codec in info.codecs],
                        "layers": list(info.layers),
                        "started_at": info.started_at,
                    }
                )
        return JSONResponse(body, headers=self._cors(request))

    async def nodes(self, request: Request) -> Response:
        """The cluster's live nodes and their load, from the registry."""
        try:
            nodes = await self.hub.registry.nodes()
        except RegistryUnavailable as error:
            return problem_response(error, request.url.path)
        return JSONResponse([dataclasses.asdict(n) for n in nodes], headers=self._cors(request))

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
        # Relayed here: the stream's node is its origin, pulled from `source`.
        upstream = publisher if isinstance(publisher, UpstreamSession) else None
        return {
            "stream": stream.name,
            "node": self.node_id if upstream is None else upstream.origin.node_id,
            "relayed": upstream is not None,
            "relayed_from": None if upstream is None else upstream.source.node_id,
            "live": stream.live,
            "publisher": getattr(publisher, "id", None),
            "viewers": stream.viewer_count,
            "tracks": tracks,
            "started_at": stream.live_since,
            "data": None if stream.data is None else stream.data.describe(),
            "recording": self.hub.recordings.state(stream.name),
        }
