"""What the node has done, for /metrics: joins, refusals, join times, and the counters of
sessions and streams that have ended, so that every counter only ever goes up."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram

from broadcast.errors import BroadcastError
from broadcast.media.session import Session
from broadcast.media.viewer import ViewerSession
from broadcast.sfu.stream import Stream
from broadcast.tasks import spawn

__all__ = ["Ledger", "Totals"]

ROLES = ("whip", "whep")
# Seconds from the POST to ICE + DTLS connected.
JOIN_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


@dataclass
class Totals:
    """Sums over what has ended; live sessions and streams are added at scrape time."""

    egress_packets: int = 0
    egress_octets: int = 0
    nacks: int = 0  # NACK requests viewers sent
    retransmits: int = 0  # packets resent to viewers
    plis_in: int = 0  # PLI/FIR from viewers
    plis_out: int = 0  # keyframe requests sent to publishers
    ingress_packets: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    ingress_octets: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    data_messages: dict[str, int] = field(default_factory=lambda: {"in": 0, "out": 0})
    data_dropped: dict[str, int] = field(default_factory=dict)  # by reason


def reason_of(error: BroadcastError) -> str:
    """A bounded label for a refusal: the error's class, in snake case."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


class Ledger:
    def __init__(self) -> None:
        self.ended = Totals()
        self.joins = Counter(
            "broadcast_joins", "Sessions started (201 to a WHIP/WHEP POST)", ["role"], registry=None
        )
        self.join_failures = Counter(
            "broadcast_join_failures",
            "WHIP/WHEP POSTs refused (by error) and sessions that never connected",
            ["role", "reason"],
            registry=None,
        )
        self.join_seconds = Histogram(
            "broadcast_join_seconds",
            "Seconds from a WHIP/WHEP POST to its session's ICE and DTLS being connected",
            ["role"],
            buckets=JOIN_BUCKETS,
            registry=None,
        )
        for role in ROLES:
            self.joins.labels(role)
            self.join_seconds.labels(role)
            self.join_failures.labels(role, "not_connected")

    def refused(self, role: str, error: BroadcastError) -> None:
        self.join_failures.labels(role, reason_of(error)).inc()

    def started(self, session: Session, posted_at: float, connect_timeout: float) -> None:
        self.joins.labels(session.role).inc()
        spawn(self._time_join(session, posted_at, connect_timeout))

    async def _time_join(self, session: Session, posted_at: float, timeout: float) -> None:
        try:
            await asyncio.wait_for(session.connected.wait(), timeout)
        except TimeoutError:
            return  # counted as not_connected when it ends
        loop_time = asyncio.get_running_loop().time()
        self.join_seconds.labels(session.role).observe(loop_time - posted_at)

    def session_ended(self, session: Session) -> None:
        if session.connected_at is None:
            self.join_failures.labels(session.role, "not_connected").inc()
        if isinstance(session, ViewerSession):
            e = self.ended
            for d in session.downtracks.values():
                e.egress_packets += d.packets
                e.egress_octets += d.octets
                e.nacks += d.nacks
                e.retransmits += d.retransmits
                e.plis_in += d.plis

    def stream_removed(self, stream: Stream) -> None:
        if stream.data is not None:
            self.ended.data_messages["in"] += stream.data.messages_in
            self.ended.data_messages["out"] += stream.data.messages_out
            for reason, count in stream.data.dropped.items():
                self.ended.data_dropped[reason] = self.ended.data_dropped.get(reason, 0) + count
        for kind in ("audio", "video"):
            for feed in stream.track_feeds(kind):
                self.ended.ingress_packets[kind] += feed.packets
                self.ended.ingress_octets[kind] += feed.octets
                self.ended.plis_out += feed.keyframe_requests
