"""The registry of one machine's worker processes when there is no Redis.

`ClaimTable` keeps claims and records in memory with the same rules as the Redis
implementation (`broadcast.registry.redis`): a claim is taken only if absent or already
ours, refreshed and released only by its owner, and everything expires `ttl` seconds
after its last heartbeat. It lives in the supervisor process (`broadcast.workers`), and the
workers reach it through `broadcast.registry.local`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from broadcast.registry.base import CLAIM_TTL, NodeInfo, StreamInfo

__all__ = ["ClaimTable"]

_T = TypeVar("_T")


class ClaimTable:
    def __init__(
        self, *, ttl: float = CLAIM_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._owners: dict[str, tuple[str, float]] = {}  # stream -> (node, expires)
        self._streams: dict[str, tuple[StreamInfo, float]] = {}
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}

    def _live(self, table: dict[str, tuple[_T, float]]) -> dict[str, _T]:
        now = self._clock()
        for key in [k for k, (_, expires) in table.items() if expires <= now]:
            del table[key]
        return {key: value for key, (value, _) in table.items()}

    def _owner(self, stream: str) -> str | None:
        return self._live(self._owners).get(stream)

    async def claim(self, stream: str, node: str) -> bool:
        owner = self._owner(stream)
        if owner not in (None, node):
            return False
        self._owners[stream] = (node, self._clock() + self._ttl)
        return True

    async def refresh(self, stream: str, node: str) -> bool:
        if self._owner(stream) != node:
            return False
        self._owners[stream] = (node, self._clock() + self._ttl)
        return True

    async def release(self, stream: str, node: str) -> None:
        if self._owner(stream) == node:
            del self._owners[stream]
            self._streams.pop(stream, None)

    async def lookup(self, stream: str) -> str | None:
        return self._owner(stream)

    async def heartbeat(self, node: NodeInfo, streams: list[StreamInfo]) -> list[str]:
        expires = self._clock() + self._ttl
        self._nodes[node.node_id] = (node, expires)
        lost = []
        for info in streams:
            if await self.refresh(info.stream, node.node_id):
                self._streams[info.stream] = (info, expires)
            else:
                lost.append(info.stream)
        return lost

    async def nodes(self) -> list[NodeInfo]:
        return sorted(self._live(self._nodes).values(), key=lambda n: n.node_id)

    async def node(self, node_id: str) -> NodeInfo | None:
        return self._live(self._nodes).get(node_id)

    async def streams(self) -> list[StreamInfo]:
        owners = self._live(self._owners)
        live = self._live(self._streams).values()
        return sorted((s for s in live if owners.get(s.stream) == s.node), key=lambda s: s.stream)

    def forget(self, node_id: str) -> None:
        """Drop a node's record, claims and streams at once (its process is gone)."""
        self._nodes.pop(node_id, None)
        for stream in [s for s, (owner, _) in self._owners.items() if owner == node_id]:
            del self._owners[stream]
            self._streams.pop(stream, None)

    async def close(self) -> None:
        """Nothing to let go of; the table lives as long as its process."""
