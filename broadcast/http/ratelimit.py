"""Per-client request rate limits on the methods that cost the server work (POST, PATCH,
DELETE): a token bucket per client address, BROADCAST_RATE_LIMIT requests a second with
bursts of BROADCAST_RATE_BURST; past it, 429 Too Many Requests with Retry-After.

The client is the TCP peer, or, for a request from an address in
BROADCAST_TRUSTED_PROXIES, the last X-Forwarded-For entry that proxy appended. A worker's
private port trusts loopback the same way: that is where a sibling worker passes requests
on (broadcast.http.affinity). Another node's relay session (the cluster secret) is not
limited. Memory is bounded: at most MAX_CLIENTS buckets, the least recently used go first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from broadcast.bucket import TokenBucket
from broadcast.errors import TooManyRequests
from broadcast.http.common import problem_response

__all__ = ["RateLimit"]

LIMITED = frozenset({"POST", "PATCH", "DELETE"})
MAX_CLIENTS = 65536
LOOPBACK = frozenset({"127.0.0.1", "::1"})


class RateLimit:
    def __init__(
        self,
        app: ASGIApp,
        *,
        rate: float,
        burst: int,
        trusted_proxies: list[str],
        private_port: int | None = None,
        exempt: Callable[[Scope], bool] = lambda scope: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.rate = rate
        self.burst = burst
        self.trusted = frozenset(trusted_proxies)
        self.private_port = private_port
        self.exempt = exempt
        self.clock = clock
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.rate > 0
            and scope["type"] == "http"
            and scope["method"] in LIMITED
            and not self.exempt(scope)
        ):
            wait = self.take(self.client(scope))
            if wait > 0:
                error = TooManyRequests(
                    f"more than {self.rate:g} requests a second from this address; slow down",
                    retry_after=max(1, math.ceil(wait)),
                )
                await problem_response(error, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def client(self, scope: Scope) -> str:
        peer = scope.get("client")
        address = str(peer[0]) if peer else "unknown"
        server = scope.get("server")
        via_sibling = (
            self.private_port is not None
            and server is not None
            and server[1] == self.private_port
            and address in LOOPBACK
        )
        if address in self.trusted or via_sibling:
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    forwarded = value.decode("latin-1").rsplit(",", 1)[-1].strip()
                    return forwarded or address
        return address

    def take(self, client: str) -> float:
        """Spend one token of `client`'s bucket: 0, or the seconds until one is back."""
        now = self.clock()
        bucket = self.buckets.pop(client, None) or TokenBucket(self.rate, self.burst, now)
        self.buckets[client] = bucket  # the most recent last: the oldest go first
        while len(self.buckets) > MAX_CLIENTS:
            self.buckets.popitem(last=False)
        return 0.0 if bucket.take(now) else bucket.wait()
