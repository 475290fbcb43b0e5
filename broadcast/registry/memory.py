"""The embedded single-node registry (the default when BROADCAST_REDIS_URL is unset)."""

from __future__ import annotations

from broadcast.registry.base import NodeInfo, StreamInfo

__all__ = ["MemoryRegistry"]


class MemoryRegistry:
    def __init__(self, node: NodeInfo) -> None:
        self._node = node
        self._owners: dict[str, str] = {}
        self._streams: dict[str, StreamInfo] = {}

    async def claim(self, stream: str, node: str) -> bool:
        owner = self._owners.setdefault(stream, node)
        return owner == node

    async def refresh(self, stream: str, node: str) -> bool:
        return self._owners.get(stream) == node

    async def release(self, stream: str, node: str) -> None:
        if self._owners.get(stream) == node:
            del self._owners[stream]
            self._streams.pop(stream, None)

    async def lookup(self, stream: str) -> str | None:
        return self._owners.get(stream)

    async def heartbeat(self, node: NodeInfo, streams: list[StreamInfo]) -> list[str]:
        self._node = node
        self._streams = {s.stream: s for s in streams if self._owners.get(s.stream) == s.node}
        return [s.stream for s in streams if self._owners.get(s.stream) != s.node]

    async def nodes(self) -> list[NodeInfo]:
        return [self._node]

    async def node(self, node_id: str) -> NodeInfo | None:
        return self._node if node_id == self._node.node_id else None

    async def streams(self) -> list[StreamInfo]:
        return list(self._streams.values())

    async def close(self) -> None:
        self._owners.clear()
        self._streams.clear()
