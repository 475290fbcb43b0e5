"""The embedded single-node registry (the default when BROADCAST_REDIS_URL is unset)."""

from __future__ import annotations

from broadcast.registry.base import NodeInfo

__all__ = ["MemoryRegistry"]


class MemoryRegistry:
    def __init__(self, node: NodeInfo) -> None:
        self._node = node
        self._owners: dict[str, str] = {}

    async def claim(self, stream: str, node: str) -> bool:
        owner = self._owners.setdefault(stream, node)
        return owner == node

    async def refresh(self, stream: str, node: str) -> bool:
        return self._owners.get(stream) == node

    async def release(self, stream: str, node: str) -> None:
        if self._owners.get(stream) == node:
            del self._owners[stream]

    async def lookup(self, stream: str) -> str | None:
        return self._owners.get(stream)

    async def nodes(self) -> list[NodeInfo]:
        return [self._node]

    async def close(self) -> None:
        self._owners.clear()
