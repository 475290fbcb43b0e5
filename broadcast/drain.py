"""Graceful drain: the first SIGTERM empties the node, the second stops it.

On the first SIGTERM a node stops being ready (`/readyz` answers 503, so load balancers
and Kubernetes stop sending it new clients), marks itself draining in the registry, asks
SSE subscribers to rejoin on another node (`reconnect`), and answers new WHIP/WHEP POSTs
with a 307 to another node, or 503 + Retry-After where there is none. Sessions already
here keep flowing; the node exits once they have all left, or BROADCAST_DRAIN_TIMEOUT
seconds after the signal. A second SIGTERM (or SIGINT) exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from broadcast.config import Settings
from broadcast.http.events import EventsExtension
from broadcast.http.ops import Ops
from broadcast.media.hub import Hub
from broadcast.registry.base import RegistryUnavailable
from broadcast.tasks import spawn

__all__ = ["Drain", "DrainingServer"]

logger = logging.getLogger(__name__)

POLL = 0.5  # seconds between looks at the sessions left
SHUTDOWN_GRACE = 2  # seconds uvicorn waits for open requests (SSE streams) at exit


class Drain:
    def __init__(self, hub: Hub, ops: Ops, events: EventsExtension, settings: Settings) -> None:
        self.hub = hub
        self.ops = ops
        self.events = events
        self.settings = settings
        self.started_at: float | None = None

    def begin(self, exit: Callable[[], None]) -> None:
        """Start draining (once); `exit` is called when the node may stop."""
        if self.started_at is not None:
            return
        self.started_at = asyncio.get_running_loop().time()
        self.ops.ready = False
        self.hub.draining = True
        self.hub.cluster.draining = True
        logger.info(
            "draining: %d sessions left, exit when they leave or in %.0f s",
            len(self.hub.sessions),
            self.settings.drain_timeout,
        )
        spawn(self._run(exit))

    async def _run(self, exit: Callable[[], None]) -> None:
        await self.hub.cluster.beat()  # the cluster learns at once, not at the next beat
        try:
            target = await self.hub.cluster.other_node()
        except RegistryUnavailable:
            target = None
        if target is not None:
            self.events.announce_reconnect(target.url)
        assert self.started_at is not None
        deadline = self.started_at + self.settings.drain_timeout
        loop = asyncio.get_running_loop()
        while self.hub.sessions and loop.time() < deadline:
            await asyncio.sleep(POLL)
        left = len(self.hub.sessions)
        if left:
            logger.warning("drain timeout: %d sessions cut", left)
        else:
            logger.info("drained: every session has left")
        exit()


class DrainingServer(uvicorn.Server):
    """uvicorn, with the first SIGTERM draining instead of stopping."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        config.timeout_graceful_shutdown = SHUTDOWN_GRACE
        super().__init__(config)
        self.drain = drain
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._draining and self._loop is not None:
            self._draining = True
            self._loop.call_soon_threadsafe(self.drain.begin, self._stop)
            return
        super().handle_exit(sig, frame)

    def _stop(self) -> None:
        self.should_exit = True
