"""This node's membership in the cluster: heartbeats, origin lookups, relay upkeep.

Every HEARTBEAT_INTERVAL the node writes its record (URL, viewers, egress, CPU, draining)
and its published streams' records, which refreshes their claims. A claim found lost
(Redis restarted empty, or was unreachable past the TTL) is taken again, so the registry
rebuilds itself from heartbeats. While Redis is unreachable, local streams keep flowing;
only what needs another node (relaying, redirecting, a new publisher's claim) answers 503
with Retry-After, and `/readyz` says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn

from broadcast.config import Settings
from broadcast.errors import ServiceUnavailable, TemporaryRedirect
from broadcast.media.publisher import PublisherSession
from broadcast.media.relay import Relay, UpstreamSession
from broadcast.registry.base import (
    HEARTBEAT_INTERVAL,
    NodeInfo,
    RegistryUnavailable,
    StreamInfo,
    StreamRegistry,
)
from broadcast.sfu.stream import Stream
from broadcast.tasks import spawn

__all__ = ["Cluster"]

logger = logging.getLogger(__name__)


class Cluster:
    def __init__(
        self,
        settings: Settings,
        registry: StreamRegistry,
        relay: Relay,
        streams: Callable[[], Iterable[Stream]],
        viewers_of: Callable[[Stream], int],
        egress_octets: Callable[[], int],
        served: Callable[[Stream], int],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.relay = relay
        self.node_id: str = settings.node_id
        self.url: str = settings.base_url
        self._streams = streams
        self._viewers_of = viewers_of
        self._egress_octets = egress_octets
        self._served = served  # upstream sessions of other nodes on a stream here
        self.available = True  # the registry answered the last heartbeat
        self.draining = False
        self.cpu = 0.0  # fraction of one core this process used over the last heartbeat
        self._tasks: list[asyncio.Task[None]] = []
        self._opening: set[str] = set()  # streams whose upstream is being opened
        self._missing: dict[str, int] = {}  # relayed streams: beats their claim was absent
        self._mark = (time.monotonic(), egress_octets(), _cpu_seconds())

    def start(self) -> None:
        # Two loops: a slow origin must never delay the heartbeat past the claims' TTL.
        self._tasks = [
            asyncio.ensure_future(self._every(self.beat, "cluster heartbeat")),
            asyncio.ensure_future(self._every(self._tend_relays, "relay upkeep")),
        ]

    async def stop(self) -> None:
        """Stop beating, close the upstreams, give this node's claims back (a publisher
        that reconnects elsewhere need not wait for them to expire)."""
        for task in self._tasks:
            task.cancel()
        await self.relay.aclose()
        for info in self.published():
            try:
                await self.registry.release(info.stream, self.node_id)
            except RegistryUnavailable:
                break

    @staticmethod
    async def _every(step: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            try:
                await step()
            except Exception:
                logger.exception("%s failed", what)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    def node_info(self) -> NodeInfo:
        now, octets, cpu = time.monotonic(), self._egress_octets(), _cpu_seconds()
        then, octets_then, cpu_then = self._mark
        self._mark = (now, octets, cpu)
        elapsed = max(now - then, 1e-3)
        self.cpu = (cpu - cpu_then) / elapsed
        viewers = sum(self._viewers_of(s) for s in self._streams())
        return NodeInfo(
            node_id=self.node_id,
            url=self.url,
            viewers=viewers,
            egress_bps=(octets - octets_then) * 8 / elapsed,
            cpu=self.cpu,
            draining=self.draining,
            sources=tuple(self._sources()),
        )

    def _sources(self) -> list[tuple[str, int, int]]:
        """The streams other nodes may pull from here: published here (0 hops), or relayed
        here and flowing (the upstream's hops)."""
        out = []
        for stream in self._streams():
            publisher = stream.publisher
            if isinstance(publisher, UpstreamSession):
                if publisher.connected_at is not None and not publisher.ended:
                    out.append((stream.name, publisher.hops, self._served(stream)))
            elif isinstance(publisher, PublisherSession):
                out.append((stream.name, 0, self._served(stream)))
        return out

    async def source_for(self, name: str, origin: NodeInfo) -> tuple[NodeInfo, int]:
        """Where to pull `name` from, and that node's hops from the origin: the origin
        while it serves fewer than BROADCAST_RELAY_FANOUT upstreams of the stream, else
        the nearest, least busy edge that still has room (a tree: each node feeds a few,
        so a stream reaches thousands of viewers), within BROADCAST_RELAY_MAX_DEPTH."""
        candidates: list[tuple[bool, int, int, NodeInfo]] = []
        for node in await self.registry.nodes():
            if node.node_id == self.node_id or node.draining:
                continue
            for stream, hops, served in node.sources:
                if stream != name or hops + 1 > self.settings.relay_max_depth:
                    continue
                if hops > 0 or node.node_id == origin.node_id:
                    full = served >= self.settings.relay_fanout
                    candidates.append((full, hops, served, node))
        if not candidates:
            return origin, 0
        full, hops, _, node = min(candidates, key=lambda c: c[:3])
        return node, hops

    def published(self) -> list[StreamInfo]:
        """Streams whose publisher is connected to this node (not relayed here)."""
        out = []
        for stream in self._streams():
            publisher = stream.publisher
            if isinstance(publisher, PublisherSession) and not isinstance(
                publisher, UpstreamSession
            ):
                codecs = tuple(
                    codec for f in stream.feeds.values() if (codec := f.active_codec) is not None
                )
                started = publisher.created_at
                out.append(
                    StreamInfo(stream.name, self.node_id, started, codecs, tuple(stream.layers))
                )
        return out

    async def beat(self) -> None:
        """One heartbeat: this node's record, its streams' records and claims."""
        try:
            lost = await self.registry.heartbeat(self.node_info(), self.published())
            for name in lost:
                if not await self.registry.claim(name, self.node_id):
                    logger.warning("stream %s is claimed by another node now", name)
            self.available = True
        except RegistryUnavailable as exc:
            if self.available:
                logger.warning("registry unavailable: %s", exc.detail)
            self.available = False

    async def _tend_relays(self) -> None:
        """Close upstreams nobody watches; follow origins that moved; serve viewers
        waiting for a stream published elsewhere (each upstream opened on its own)."""
        self.relay.expire(asyncio.get_event_loop().time())
        streams = list(self._streams())
        names = {s.name for s in streams}
        self._missing = {n: k for n, k in self._missing.items() if n in names}
        try:
            # Published right now: an origin writes a stream's record while its publisher
            # is connected, so a publisher gone (even within its grace) ends the relay,
            # and the edge's viewers see the stream inactive, as the origin's do.
            published = {info.stream for info in await self.registry.streams()}
        except RegistryUnavailable:
            return  # keep what flows; look again when the registry answers
        for stream in streams:
            publisher = stream.publisher
            relayed = isinstance(publisher, UpstreamSession)
            if publisher is not None and not relayed:
                continue
            if (not relayed and not self._viewers_of(stream)) or stream.name in self._opening:
                continue
            try:
                origin = await self.origin_of(stream.name)
            except RegistryUnavailable:
                return  # keep what flows; look again when the registry answers
            if origin is None or stream.name not in published:
                # Absent twice in a row: a claim being taken again after Redis came back
                # empty, or one late heartbeat, is no reason to cut the viewers off.
                missing = self._missing[stream.name] = self._missing.get(stream.name, 0) + 1
                if relayed and missing >= 2:
                    self.relay.close(stream.name, "the origin no longer publishes the stream")
                continue
            self._missing.pop(stream.name, None)
            if self.settings.cluster_mode == "relay":
                self._opening.add(stream.name)
                spawn(self._open(stream.name, origin))

    async def _open(self, name: str, origin: NodeInfo) -> None:
        try:
            source = await self.source_for(name, origin)
            await self.relay.ensure(name, origin, 0, source)
        except ServiceUnavailable as exc:  # the registry too: tried again next round
            logger.info("cannot relay %s yet: %s", name, exc.detail)
        finally:
            self._opening.discard(name)

    async def other_node(self) -> NodeInfo | None:
        """The least loaded live node, other than this one, that is not draining."""
        others = [
            n for n in await self.registry.nodes() if n.node_id != self.node_id and not n.draining
        ]
        return min(others, key=lambda n: (n.viewers, n.cpu), default=None)

    async def elsewhere(self, role: str, name: str, query: str) -> NoReturn:
        """A new session while this node drains: 307 to another node, else 503."""
        try:
            target = await self.other_node()
        except RegistryUnavailable:
            target = None
        if target is None:
            raise ServiceUnavailable(
                "this node is shutting down and no other node takes new sessions; try again",
                retry_after=5,
            )
        location = f"{target.url.rstrip('/')}/{role}/{name}" + (f"?{query}" if query else "")
        raise TemporaryRedirect(
            f"this node is shutting down; {target.node_id} takes new sessions", location=location
        )

    async def origin_of(self, name: str) -> NodeInfo | None:
        """The live node, other than this one, that `name` is published on."""
        owner = await self.registry.lookup(name)
        if owner is None or owner == self.node_id:
            return None
        return await self.registry.node(owner)

    async def route_viewer(self, name: str, hops: int, query: str) -> None:
        """Before a WHEP session for `name` that is not published here: redirect to the
        origin, or make sure it is relayed here; nothing if no node has it (the viewer
        waits for a publisher, as on a single node)."""
        try:
            origin = await self.origin_of(name)
        except RegistryUnavailable as exc:
            raise ServiceUnavailable(
                f"the stream registry is unreachable, so {name!r} cannot be found on "
                f"another node: {exc.detail}",
                retry_after=5,
            ) from exc
        if origin is None:
            return
        if self.settings.cluster_mode == "redirect":
            location = f"{origin.url.rstrip('/')}/whep/{name}" + (f"?{query}" if query else "")
            raise TemporaryRedirect(f"{name!r} is served by {origin.node_id}", location=location)
        try:
            source = await self.source_for(name, origin)
        except RegistryUnavailable:
            source = (origin, 0)
        await self.relay.ensure(name, origin, hops, source)


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
