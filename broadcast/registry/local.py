"""One machine's registry over a Unix socket: the supervisor serves a `ClaimTable`, each
worker process is a `LocalRegistry` client (BROADCAST_WORKERS > 1 without Redis).

Protocol: one JSON object per line each way. A request is `{"op": name, "args": [...]}`,
an answer `{"ok": result}` or `{"error": text}`. Records travel as their dataclass fields.
The socket sits in a directory only this user can enter (mode 0700).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

from broadcast.registry.base import NodeInfo, RegistryUnavailable, StreamInfo
from broadcast.registry.table import ClaimTable

__all__ = ["LocalRegistry", "serve_table"]

logger = logging.getLogger(__name__)

TIMEOUT = 1.0  # seconds for one request; the supervisor answers in microseconds
LIMIT = 1 << 20  # bytes in one line (a node record lists its streams)


def _node(data: dict[str, Any]) -> NodeInfo:
    sources = tuple((str(s), int(h), int(n)) for s, h, n in data.pop("sources", ()))
    return NodeInfo(**data, sources=sources)


def _stream(data: dict[str, Any]) -> StreamInfo:
    data["codecs"], data["layers"] = tuple(data["codecs"]), tuple(data["layers"])
    return StreamInfo(**data)


async def _dispatch(table: ClaimTable, op: str, args: list[Any]) -> Any:
    if op in ("claim", "refresh", "release", "lookup"):
        return await getattr(table, op)(str(args[0]), *(str(a) for a in args[1:]))
    if op == "heartbeat":
        return await table.heartbeat(_node(args[0]), [_stream(s) for s in args[1]])
    if op == "nodes":
        return [dataclasses.asdict(n) for n in await table.nodes()]
    if op == "node":
        node = await table.node(str(args[0]))
        return None if node is None else dataclasses.asdict(node)
    if op == "streams":
        return [dataclasses.asdict(s) for s in await table.streams()]
    raise ValueError(f"unknown operation {op!r}")


async def serve_table(table: ClaimTable, path: str) -> asyncio.AbstractServer:
    """Answer `LocalRegistry` clients on the Unix socket at `path`."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    answer = {"ok": await _dispatch(table, request["op"], request["args"])}
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(client, path, limit=LIMIT)


class LocalRegistry:
    """A worker's view of the supervisor's `ClaimTable` (a `StreamRegistry`)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = asyncio.Lock()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _call(self, op: str, *args: Any) -> Any:
        async with self._lock:
            try:
                async with asyncio.timeout(TIMEOUT):
                    if self._stream is None:
                        self._stream = await asyncio.open_unix_connection(self._path, limit=LIMIT)
                    reader, writer = self._stream
                    writer.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                if not line:
                    raise ConnectionError("the supervisor closed the registry socket")
                answer = json.loads(line)
            except (OSError, TimeoutError, ValueError) as exc:
                self._drop()
                raise RegistryUnavailable(
                    f"this machine's worker registry did not answer: {exc or type(exc).__name__}",
                    retry_after=5,
                ) from exc
        if "error" in answer:
            raise RegistryUnavailable(f"worker registry: {answer['error']}", retry_after=5)
        return answer["ok"]

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None

    async def claim(self, stream: str, node: str) -> bool:
        return bool(await self._call("claim", stream, node))

    async def refresh(self, stream: str, node: str) -> bool:
        return bool(await self._call("refresh", stream, node))

    async def release(self, stream: str, node: str) -> None:
        await self._call("release", stream, node)

    async def lookup(self, stream: str) -> str | None:
        owner = await self._call("lookup", stream)
        return None if owner is None else str(owner)

    async def heartbeat(self, node: NodeInfo, streams: list[StreamInfo]) -> list[str]:
        records = [dataclasses.asdict(s) for s in streams]
        return [str(s) for s in await self._call("heartbeat", dataclasses.asdict(node), records)]

    async def nodes(self) -> list[NodeInfo]:
        return [_node(n) for n in await self._call("nodes")]

    async def node(self, node_id: str) -> NodeInfo | None:
        data = await self._call("node", node_id)
        return None if data is None else _node(data)

    async def streams(self) -> list[StreamInfo]:
        return [_stream(s) for s in await self._call("streams")]

    async def close(self) -> None:
        self._drop()
