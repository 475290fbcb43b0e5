"""An in-test link shaper: a token-bucket filter on one aiortc peer's incoming datagrams.

It behaves like `tc qdisc ... tbf rate R latency L` on the peer's downlink: datagrams leave
a FIFO queue at `rate` bit/s; one that would wait longer than `latency` is dropped (tail
drop). So a sender above the rate first sees its round-trip time grow by up to `latency`,
then loses packets, as on a real bottleneck. Everything the peer receives (STUN, DTLS,
SRTP, SRTCP) goes through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection

__all__ = ["Shaper"]

UDP_IP_OVERHEAD = 28  # bytes of IPv4 + UDP header a real link also carries


class Shaper:
    def __init__(self, latency: float = 0.2) -> None:
        self.rate: float | None = None  # bit/s; None: no limit
        self.latency = latency
        self.dropped = 0
        self.passed = 0
        self._free_at = 0.0
        self._loop = asyncio.get_running_loop()

    def install(self, pc: RTCPeerConnection) -> None:
        """Shape what `pc` receives (call after its local description is set)."""
        connection = pc.getTransceivers()[0].receiver.transport.transport._connection
        for protocol in connection._protocols:
            protocol.datagram_received = self._wrap(protocol.datagram_received)

    def limit(self, rate: float | None) -> None:
        self.rate = rate

    def _wrap(self, deliver: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
        def receive(data: bytes, addr: Any) -> None:
            rate = self.rate
            now = self._loop.time()
            if rate is None and self._free_at <= now:
                self.passed += 1
                deliver(data, addr)
                return
            start = max(now, self._free_at)
            if start - now > self.latency:
                self.dropped += 1
                return
            self._free_at = start + (len(data) + UDP_IP_OVERHEAD) * 8 / (rate or float("inf"))
            self.passed += 1
            self._loop.call_at(self._free_at, deliver, data, addr)

        return receive
