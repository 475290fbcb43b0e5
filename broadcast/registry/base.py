"""The StreamRegistry seam: which node owns (publishes) which stream, cluster-wide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["NodeInfo", "StreamRegistry"]


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    url: str
    viewers: int = 0
    egress_bps: float = 0.0


class StreamRegistry(Protocol):
    async def claim(self, stream: str, node: str) -> bool:
        """Own `stream` for `node`; False if another node owns it."""

    async def refresh(self, stream: str, node: str) -> bool:
        """Extend the claim; False if it was lost."""

    async def release(self, stream: str, node: str) -> None:
        """Give the stream up (only if `node` still owns it)."""

    async def lookup(self, stream: str) -> str | None:
        """The node that owns `stream`, if any."""

    async def nodes(self) -> list[NodeInfo]:
        """Live nodes."""

    async def close(self) -> None: ...
