"""The StreamRegistry seam: which node owns (publishes) which stream, cluster-wide.

A claim is the source of truth for "stream S is published on node N": taken with
`claim` when a publisher arrives, kept alive by `heartbeat` (every `HEARTBEAT_INTERVAL`),
and gone `ttl` seconds after the node stops refreshing it (it crashed, or lost Redis).
Node and stream records are descriptive (load, codecs, layers) and expire the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from broadcast.errors import ServiceUnavailable

__all__ = [
    "CLAIM_TTL",
    "HEARTBEAT_INTERVAL",
    "NodeInfo",
    "RegistryUnavailable",
    "StreamInfo",
    "StreamRegistry",
]

HEARTBEAT_INTERVAL = 2.0  # seconds between a node's heartbeats
CLAIM_TTL = 6.0  # seconds a claim or record outlives its last heartbeat


class RegistryUnavailable(ServiceUnavailable):
    """The shared registry cannot be reached; cross-node work waits for it."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    url: str  # base URL other nodes and clients use for this node
    viewers: int = 0
    egress_bps: float = 0.0
    cpu: float = 0.0  # fraction of one core the process used since the last heartbeat
    draining: bool = False
    # (stream, relay hops from its origin, upstream sessions this node serves for it) for
    # each stream another node may pull from here: 0 hops for its own publishers' streams.
    sources: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class StreamInfo:
    stream: str
    node: str  # the origin: the node its publisher is connected to
    started_at: float = 0.0  # Unix time
    codecs: tuple[str, ...] = ()
    layers: tuple[str, ...] = field(default=())  # simulcast rids, if any


class StreamRegistry(Protocol):
    async def claim(self, stream: str, node: str) -> bool:
        """Own `stream` for `node` (atomic, cluster-wide); False if another node owns it."""

    async def refresh(self, stream: str, node: str) -> bool:
        """Extend `node`'s claim; False if it was lost (expired or taken)."""

    async def release(self, stream: str, node: str) -> None:
        """Give the stream up, only if `node` still owns it."""

    async def lookup(self, stream: str) -> str | None:
        """The node that owns `stream`, if any."""

    async def heartbeat(self, node: NodeInfo, streams: list[StreamInfo]) -> list[str]:
        """Publish this node's record and its streams' records, refresh their claims;
        answer the streams whose claim was lost."""

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes (their records have not expired)."""

    async def node(self, node_id: str) -> NodeInfo | None:
        """One live node's record."""

    async def streams(self) -> list[StreamInfo]:
        """Live streams' records, cluster-wide."""

    async def close(self) -> None: ...
