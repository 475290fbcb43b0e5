"""The Starlette application: routes, error mapping, lifespan wiring."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiortc import RTCIceServer
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from broadcast.config import Settings
from broadcast.drain import Drain
from broadcast.errors import BroadcastError, MethodNotAllowed, NotFound
from broadcast.http.common import bearer_is, problem_response
from broadcast.http.endpoints import Endpoints
from broadcast.http.events import EventsExtension
from broadcast.http.layers import LayerExtension
from broadcast.http.openapi import openapi_route
from broadcast.http.ops import Ops
from broadcast.http.pages import Pages
from broadcast.http.ratelimit import RateLimit
from broadcast.http.recording import RecordingApi
from broadcast.media import aiortc_glue as glue
from broadcast.media import udpmux
from broadcast.media.hub import Hub
from broadcast.registry.base import NodeInfo, StreamRegistry
from broadcast.registry.memory import MemoryRegistry

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _server_ice_servers(settings: Settings) -> list[RTCIceServer]:
    # The server's own peer connections only need STUN (server-reflexive candidates);
    # TURN is for clients, which get it in Link headers.
    return [RTCIceServer(urls=url) for url in settings.ice_servers if url.startswith("stun")]


def _registry(settings: Settings) -> StreamRegistry:
    """Redis when BROADCAST_REDIS_URL is set (a cluster), else this node alone."""
    if settings.redis_url:
        from broadcast.registry.redis import RedisRegistry

        return RedisRegistry(settings.redis_url)
    return MemoryRegistry(NodeInfo(node_id=settings.node_id, url=settings.base_url))


def _relay_exempt(secret: str | None) -> Callable[[Scope], bool]:
    """Another node's relay session (Bearer <cluster secret>) is not rate limited."""

    def exempt(scope: Scope) -> bool:
        return secret is not None and bearer_is(Request(scope), secret)

    return exempt


def create_app(
    settings: Settings, registry: StreamRegistry | None = None, private_port: int | None = None
) -> Starlette:
    """The node's application; `registry` replaces the one the settings select (a worker
    process uses its supervisor's); `private_port`: a worker's own port, where requests a
    sibling passes on arrive (their client is in X-Forwarded-For)."""
    glue.register_passthrough_codecs()
    glue.defer_bitrate_estimators()
    glue.echo_offered_payload_types()
    glue.restrict_host_addresses(settings.ice_addresses)
    udpmux.install()
    registry = registry or _registry(settings)
    hub = Hub(settings, registry, _server_ice_servers(settings))
    ops = Ops(hub, settings)
    events = EventsExtension(hub, settings, ops.describe)
    layers = LayerExtension(hub, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        ops.loop_lag.start()
        logger.info("broadcast node %s serving at %s", settings.node_id, settings.base_url)
        try:
            yield
        finally:
            ops.ready = False
            await ops.loop_lag.stop()
            await hub.close()
            await registry.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: BroadcastError
        if exc.status_code == 404:
            error = NotFound(f"nothing at {request.url.path}")
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "GET, HEAD")
            error = MethodNotAllowed(f"{request.method} is not allowed here", allow=allow)
        else:
            error = BroadcastError(str(exc.detail))
            error.status = exc.status_code  # type: ignore[misc]
        return problem_response(error, request.url.path)

    routes = [
        *Endpoints("whip", settings, hub).routes(),
        *events.routes(),
        *layers.routes(),
        *Endpoints(
            "whep", settings, hub, lambda session: [events.link(session), layers.link(session)]
        ).routes(),
        *ops.routes(),
        *RecordingApi(hub, settings).routes(),
        *Pages().routes(),
        openapi_route(),
    ]
    limits = Middleware(
        RateLimit,
        rate=settings.rate_limit,
        burst=settings.rate_burst,
        trusted_proxies=settings.trusted_proxies,
        private_port=private_port,
        exempt=_relay_exempt(settings.cluster_secret),
    )
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
        middleware=[limits],
    )
    app.state.drain = Drain(hub, ops, events, settings)
    app.state.hub = hub
    app.state.ops = ops
    app.state.settings = settings
    return app
