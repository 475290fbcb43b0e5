"""Worker affinity: one HTTP port, N worker processes (BROADCAST_WORKERS > 1).

The kernel spreads connections on the public port over the workers (SO_REUSEPORT), so a
request can land on a worker that does not hold what it is about:

- a session URL (`/whip|whep/{stream}/{session}...`: PATCH, DELETE, the SSE and layer
  extensions) is passed to the worker that made the session; its id starts with that
  worker's index (`broadcast.media.session.new_session_id`);
- `/api/streams/{stream}` and its recording API are passed to the worker the stream is
  published on;
- `/metrics` gathers every worker's metrics, each sample labelled `worker`.

The answer to a WHIP/WHEP POST closes its connection, so that sessions spread over the
workers even when a client or reverse proxy sends every request on one kept-alive
connection.

Each worker also listens on a private port (`BROADCAST_PORT + 1 + index`); requests that
arrive there are always served where they land, so passing one on cannot loop. A WHEP POST
is never passed on: the worker it lands on serves it, relaying the stream from the worker
that has it if need be (`broadcast.media.cluster`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broadcast.errors import ServiceUnavailable
from broadcast.http.common import problem_response
from broadcast.media.session import worker_of
from broadcast.registry.base import RegistryUnavailable

__all__ = ["WorkerRouter", "merge_metrics"]

logger = logging.getLogger(__name__)

# RFC 9110 §7.6.1: connection-specific fields are not forwarded.
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"host",
}
METRICS_TIMEOUT = 2.0  # seconds a sibling's /metrics may take


class WorkerRouter:
    def __init__(
        self,
        app: ASGIApp,
        index: int,
        siblings: list[str],
        node_ids: list[str],
        public_port: int,
        lookup: Callable[[str], Awaitable[str | None]],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.index = index
        self.siblings = siblings  # private base URL of each worker, by index
        self.node_ids = node_ids  # registry node id of each worker, by index
        self.public_port = public_port
        self.lookup = lookup
        self.max_body_bytes = max_body_bytes
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _port(scope) == self.public_port:
            path: str = scope["path"]
            if path == "/metrics" and scope["method"] in ("GET", "HEAD"):
                await self._metrics(scope, send)
                return
            target = await self._target(path)
            if target is not None and target != self.index:
                await self._pass(target, scope, receive, send)
                return
            if scope["method"] == "POST" and _is_endpoint(path):
                await self.app(scope, receive, _closing(send))
                return
        elif scope["type"] == "lifespan":
            try:
                await self.app(scope, receive, send)
            finally:
                await self.client.aclose()
            return
        await self.app(scope, receive, send)

    async def _target(self, path: str) -> int | None:
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] in ("whip", "whep"):
            index = worker_of(parts[2])
            return index if index is not None and index < len(self.siblings) else None
        if len(parts) >= 3 and parts[:2] == ["api", "streams"]:  # and its recording
            with contextlib.suppress(RegistryUnavailable):
                owner = await self.lookup(parts[2])
                if owner in self.node_ids:
                    return self.node_ids.index(owner)
        return None

    async def _pass(self, index: int, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward the request to worker `index`'s private port and stream its answer
        back (an SSE stream too), until either side is done."""
        body = await _body(receive, self.max_body_bytes + 1)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", client[0].encode()))
        query = scope["query_string"].decode("latin-1")
        url = self.siblings[index] + scope["path"] + (f"?{query}" if query else "")
        request = self.client.build_request(scope["method"], url, headers=headers, content=body)
        try:
            response = await self.client.send(request, stream=True)
        except Exception as exc:  # whatever broke the hop, the client gets a 503
            # (httpx raises its own errors, but a connection torn down under load has
            # also surfaced as an AttributeError from deep in its socket layer.)
            logger.warning("passing %s to worker %d failed: %r", scope["path"], index, exc)
            error = ServiceUnavailable(
                f"worker {index} of this node did not answer: {type(exc).__name__}",
                retry_after=2,
            )
            await problem_response(error, scope["path"])(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP
                    ],
                }
            )
            pump = asyncio.ensure_future(_pump(response, send))
            gone = asyncio.ensure_future(_disconnect(receive))
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            for task in (pump, gone):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError, OSError):
                await pump
        finally:
            await response.aclose()

    async def _metrics(self, scope: Scope, send: Send) -> None:
        async def fetch(url: str) -> str | None:
            try:
                response = await self.client.get(f"{url}/metrics", timeout=METRICS_TIMEOUT)
            except httpx.HTTPError:
                return None
            return response.text if response.status_code == 200 else None

        texts = await asyncio.gather(*(fetch(url) for url in self.siblings))
        body = merge_metrics(enumerate(texts))
        headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        head = scope["method"] == "HEAD"
        await send({"type": "http.response.body", "body": b"" if head else body})


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge_metrics(texts: Iterable[tuple[int, str | None]]) -> bytes:
    """One exposition of several workers' metrics: every sample gets a `worker` label, and
    `broadcast_workers_up{worker}` says whose metrics could not be read (0)."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily(
        "broadcast_workers_up", "1 if the worker's metrics were read", labels=["worker"]
    )
    for index, text in texts:
        up.add_metric([str(index)], 0.0 if text is None else 1.0)
        for family in text_string_to_metric_families(text or ""):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(index)}
                merged.samples.append(sample._replace(labels=labels))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), up]))
    return generate_latest(registry)


def _is_endpoint(path: str) -> bool:
    parts = path.strip("/").split("/")
    return len(parts) == 2 and parts[0] in ("whip", "whep")


def _closing(send: Send) -> Send:
    """Close the connection after a WHIP/WHEP POST's answer, so that a client or proxy
    that keeps its connection alive still spreads its sessions over the workers: each
    POST then comes on a new connection, which the kernel hands to any worker."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return wrapped


def _port(scope: Scope) -> int | None:
    server = scope.get("server")
    return int(server[1]) if server and server[1] is not None else None


async def _body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        if size < limit:
            chunks.append(chunk[: limit - size])
        size += len(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _pump(response: httpx.Response, send: Send) -> None:
    async for chunk in response.aiter_raw():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _disconnect(receive: Receive) -> Message:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return message
