"""Origin → edge relay: one upstream WHEP session per stream, fanned out locally.

A node asked for a stream that is published on another node (the origin, found in the
registry) becomes an edge for it: it opens one WHEP session to the origin, server to
server, authenticated with the cluster secret, and that session stands in for the
publisher of the local stream. Local viewers are ordinary viewers of it, so keyframe
requests (PLI) and RTCP feedback reach the origin through the upstream's receivers, and
sender reports keep lip sync. The upstream closes `relay_grace` seconds after its last
local viewer left, or as soon as the registry names another origin (the publisher moved:
a new upstream is opened and local viewers resume at its first keyframe).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import urljoin

import httpx
from aiortc import RTCIceServer, RTCSessionDescription

from broadcast.config import Settings
from broadcast.errors import ServiceUnavailable
from broadcast.media import udpmux
from broadcast.media.publisher import PublisherSession
from broadcast.media.session import Session
from broadcast.registry.base import NodeInfo
from broadcast.sfu.stream import Stream

__all__ = ["HOPS_HEADER", "MAX_RELAYED_LAYERS", "Relay", "UpstreamSession"]

logger = logging.getLogger(__name__)

# How many relay hops the requesting node is from the origin (honoured with the cluster
# secret only): an edge refuses to go past BROADCAST_RELAY_MAX_DEPTH.
HOPS_HEADER = "X-Broadcast-Relay-Hops"
MAX_RELAYED_LAYERS = 8  # video sections an upstream may ask for (RFC 8853 allows more)
UPSTREAM_TIMEOUT = 5.0  # seconds for each HTTP exchange with the origin
OPEN_TIMEOUT = 10.0  # seconds for an upstream to be negotiated, all steps together


class UpstreamSession(PublisherSession):
    """An edge's WHEP session to the origin; to the local stream it is the publisher."""

    def __init__(
        self,
        stream: Stream,
        ice_servers: list[RTCIceServer],
        on_ended: Callable[[Session, str], None],
        *,
        origin: NodeInfo,
        source: NodeInfo | None = None,
        hops: int = 1,
    ) -> None:
        # One transport for all the sections it offers (one per layer).
        super().__init__(stream, ice_servers, on_ended, max_bundle=True)
        self.origin = origin  # the node the stream is published on
        self.source = source or origin  # the node pulled from: the origin or an edge
        self.hops = hops  # relay hops between the origin and this node
        self.resource: str | None = None  # the session URL at the origin
        self.rids: list[str] = []  # the simulcast layers relayed, one video section each

    async def open(self, client: httpx.AsyncClient, secret: str | None, hops: int) -> None:
        """Offer to the origin's WHEP endpoint and apply its answer.

        A simulcast stream's layers each get a video section (the origin pins them in
        its layer order), so every layer reaches the edge and its viewers choose there.
        """
        base = self.source.url.rstrip("/")
        rids = await _layers(client, f"{base}/api/streams/{self.stream.name}")
        self.rids = rids[:MAX_RELAYED_LAYERS]
        self.pc.addTransceiver("audio", direction="recvonly")
        for _ in range(max(1, len(self.rids))):
            self.pc.addTransceiver("video", direction="recvonly")
        # An m=application section (after the media ones: aiortc bundles SCTP on the first
        # transport), so the origin mirrors the publisher's data channels here too.
        self.pc.createDataChannel("broadcast-relay")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        url = f"{base}/whep/{self.stream.name}"
        headers = {"Content-Type": "application/sdp", HOPS_HEADER: str(hops)}
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        response = await client.post(
            url, content=self.pc.localDescription.sdp, headers=headers, timeout=UPSTREAM_TIMEOUT
        )
        if response.status_code != 201:
            raise ServiceUnavailable(
                f"the node {self.source.node_id} refused the relay: "
                f"{response.status_code} {response.text[:200]}",
                retry_after=2,
            )
        self.resource = urljoin(url, response.headers.get("location", ""))
        if self.ended:  # closed while the origin answered: do not touch the stream
            raise ServiceUnavailable("the upstream was closed while opening", retry_after=2)
        await self.pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
        self.prepare()

    def prepare(self) -> None:
        """Feed the local stream from the answer's sections: audio, then one video
        section per layer (or the one video)."""
        layer_feeds = self.stream.set_layers(tuple(self.rids))
        videos = [t for t in self.pc.getTransceivers() if t.kind == "video"]
        for transceiver in self.pc.getTransceivers():
            kind = transceiver.kind
            feed = self.stream.feeds[kind]
            if kind == "video" and self.rids:
                feed = layer_feeds[self.rids[videos.index(transceiver)]]
            self.feed_from(transceiver, {None: feed})


async def _layers(client: httpx.AsyncClient, url: str) -> list[str]:
    """The origin's simulcast rids for a stream, in its order (empty: none, or unknown)."""
    try:
        response = await client.get(url, timeout=UPSTREAM_TIMEOUT)
        tracks = response.json().get("tracks", []) if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        return []
    for track in tracks:
        if track.get("kind") == "video":
            return [str(x["rid"]) for x in track.get("layers", []) if x.get("rid")]
    return []


class Relay:
    """The upstreams of one node, by stream name."""

    def __init__(
        self,
        settings: Settings,
        ice_servers: list[RTCIceServer],
        stream_for: Callable[[str], Stream],
        viewers_of: Callable[[Stream], int],
        gathering: udpmux.Gathering | None = None,
    ) -> None:
        self.settings = settings
        self.ice_servers = ice_servers
        self.gathering = gathering  # the upstreams' ICE shares the node's media port
        self._stream_for = stream_for
        self._viewers_of = viewers_of
        self.upstreams: dict[str, UpstreamSession] = {}
        self._unwatched_since: dict[str, float] = {}
        self._deletes: set[asyncio.Task[None]] = set()
        self._client = httpx.AsyncClient()

    async def ensure(
        self,
        name: str,
        origin: NodeInfo,
        hops: int,
        source: tuple[NodeInfo, int] | None = None,
    ) -> None:
        """Have an upstream for `name`, published on `origin` (open one, or keep the one
        there); `source`: the node to pull from and its hops from the origin (default:
        the origin itself); `hops`: how far the asking node is (0: a client)."""
        upstream = self.upstreams.get(name)
        if (
            upstream is not None
            and not upstream.ended
            and upstream.origin.node_id == origin.node_id
        ):
            return
        if hops >= self.settings.relay_max_depth:
            raise ServiceUnavailable(
                f"stream {name!r} is {hops} relay hops away, more than "
                f"BROADCAST_RELAY_MAX_DEPTH={self.settings.relay_max_depth}",
                retry_after=5,
            )
        if upstream is not None:
            upstream.end("the stream moved to another origin")
        stream = self._stream_for(name)
        if stream.publisher is not None and not isinstance(stream.publisher, UpstreamSession):
            return  # published here meanwhile
        node, distance = source or (origin, 0)
        upstream = UpstreamSession(
            stream, self.ice_servers, self._ended, origin=origin, source=node, hops=distance + 1
        )
        # Set before the first await: viewers arriving meanwhile share this upstream.
        stream.set_publisher(upstream)
        self.upstreams[name] = upstream
        self._unwatched_since.pop(name, None)
        try:
            with udpmux.gathering_on(self.gathering):
                await asyncio.wait_for(
                    upstream.open(self._client, self.settings.cluster_secret, upstream.hops),
                    OPEN_TIMEOUT,
                )
        except BaseException as exc:  # cancelled too: never leave a half-open upstream
            upstream.end(f"opening failed: {exc!r}")
            if isinstance(exc, ServiceUnavailable | asyncio.CancelledError):
                raise
            raise ServiceUnavailable(
                f"the node {node.node_id} cannot be reached: {type(exc).__name__}",
                retry_after=2,
            ) from exc
        logger.info(
            "relaying %s from %s (%s), %d hops", name, node.node_id, node.url, upstream.hops
        )

    def close(self, name: str, reason: str) -> None:
        upstream = self.upstreams.get(name)
        if upstream is not None:
            upstream.end(reason)

    def _ended(self, session: Session, reason: str) -> None:
        """An upstream ended (closed here, failed, or the origin closed it): forget it and
        end its session at the origin."""
        name = session.stream.name
        if self.upstreams.get(name) is session:
            del self.upstreams[name]
            self._unwatched_since.pop(name, None)
        assert isinstance(session, UpstreamSession)
        if session.resource is not None:
            task = asyncio.ensure_future(self._delete(session.resource))
            self._deletes.add(task)
            task.add_done_callback(self._deletes.discard)

    async def _delete(self, url: str) -> None:
        headers = {}
        if self.settings.cluster_secret is not None:
            headers["Authorization"] = f"Bearer {self.settings.cluster_secret}"
        try:
            await self._client.delete(url, headers=headers, timeout=UPSTREAM_TIMEOUT)
        except (httpx.HTTPError, RuntimeError) as exc:
            logger.info("upstream DELETE %s failed: %s", url, exc)

    def expire(self, now: float) -> None:
        """Close upstreams that have had no local viewer for `relay_grace` seconds."""
        for name, upstream in list(self.upstreams.items()):
            if self._viewers_of(upstream.stream):
                self._unwatched_since.pop(name, None)
                continue
            since = self._unwatched_since.setdefault(name, now)
            if now - since >= self.settings.relay_grace:
                self.close(name, "no local viewers")

    async def aclose(self) -> None:
        for name in list(self.upstreams):
            self.close(name, "server shutting down")
        if self._deletes:
            await asyncio.wait(self._deletes, timeout=UPSTREAM_TIMEOUT)
        await self._client.aclose()
