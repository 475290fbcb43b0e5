"""A named stream: its track feeds, at most one publisher, any number of viewers."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from broadcast.protocol.rtp import seconds_to_ntp
from broadcast.sfu.downtrack import DownTrack
from broadcast.sfu.feed import TrackFeed

__all__ = ["SENDER_REPORT_INTERVAL", "ReportTarget", "Stream"]

logger = logging.getLogger(__name__)

# How often each viewer's sender report values are refreshed (aiortc sends them every
# 0.5-1.5 s, RFC 3550 §6.2); each refresh is a fresh, consistent NTP/RTP pair.
SENDER_REPORT_INTERVAL = 0.25


class ReportTarget(Protocol):
    def __call__(
        self, ntp_timestamp: int, rtp_timestamp: int, packets: int, octets: int
    ) -> None: ...


@dataclass(eq=False)
class Subscription:
    """A viewer's downtracks in this stream, with where their sender reports go."""

    downtracks: dict[str, tuple[DownTrack, ReportTarget]] = field(default_factory=dict)


class Stream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.feeds = {"audio": TrackFeed("audio"), "video": TrackFeed("video")}
        self.publisher: object | None = None
        self.created_at = time.time()
        self.live_since: float | None = None
        # Loop time when the last publisher left (None while live or never published).
        self.idle_since: float | None = asyncio.get_event_loop().time()
        self.subscriptions: dict[object, Subscription] = {}
        self._report_task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self.publisher is not None

    @property
    def viewer_count(self) -> int:
        return len(self.subscriptions)

    def set_publisher(self, publisher: object | None) -> None:
        self.publisher = publisher
        if publisher is None:
            self.live_since = None
            self.idle_since = asyncio.get_event_loop().time()
            for feed in self.feeds.values():
                feed.detach_source()
        else:
            self.live_since = time.time()
            self.idle_since = None

    def subscribe(
        self, viewer: object, kind: str, downtrack: DownTrack, report: ReportTarget
    ) -> None:
        sub = self.subscriptions.setdefault(viewer, Subscription())
        sub.downtracks[kind] = (downtrack, report)
        self.feeds[kind].add(downtrack)
        if self._report_task is None:
            self._report_task = asyncio.ensure_future(self._report_loop())

    def unsubscribe(self, viewer: object) -> None:
        sub = self.subscriptions.pop(viewer, None)
        if sub is None:
            return
        for kind, (downtrack, _) in sub.downtracks.items():
            self.feeds[kind].remove(downtrack)
        if not self.subscriptions and self._report_task is not None:
            self._report_task.cancel()
            self._report_task = None

    async def _report_loop(self) -> None:
        loop = asyncio.get_event_loop()
        while True:
            self.refresh_sender_reports(loop.time())
            await asyncio.sleep(SENDER_REPORT_INTERVAL)

    def refresh_sender_reports(self, now: float) -> None:
        clocks: dict[str, tuple[int, float] | None] = {}
        for kind, feed in self.feeds.items():
            clock = feed.clock_at(now)
            clocks[kind] = None if clock is None else (seconds_to_ntp(clock[0]), clock[1])
        for sub in self.subscriptions.values():
            for kind, (downtrack, report) in sub.downtracks.items():
                clock = clocks[kind]
                if clock is None:
                    continue
                rtp = downtrack.report_timestamp(int(clock[1]))
                if rtp is not None:
                    report(clock[0], rtp, downtrack.packets, downtrack.octets)

    def close(self) -> None:
        if self._report_task is not None:
            self._report_task.cancel()
            self._report_task = None
        for feed in self.feeds.values():
            feed.detach_source()
