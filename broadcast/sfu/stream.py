"""A named stream: its track feeds, at most one publisher, any number of viewers."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from broadcast.protocol.rtp import seconds_to_ntp
from broadcast.sfu.downtrack import DownTrack
from broadcast.sfu.feed import TrackFeed
from broadcast.sfu.simulcast import LayerState, choose_layer

if TYPE_CHECKING:
    from broadcast.media.datachannels import DataChannelHub

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
    layer: str | None = None  # the rid this viewer asked for; None: the highest


class Stream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.feeds = {"audio": TrackFeed("audio"), "video": TrackFeed("video")}
        self.publisher: object | None = None
        self.created_at = time.time()
        self.live_since: float | None = None
        # Loop time when the last publisher left (None while live or never published).
        self.idle_since: float | None = asyncio.get_event_loop().time()
        self.left_at: float | None = None  # loop time a publisher last left
        self.subscriptions: dict[object, Subscription] = {}
        # A simulcast publisher's video layers by rid, in its a=simulcast order; while
        # there are any, they feed the viewers' video instead of feeds["video"].
        self.layers: dict[str, TrackFeed] = {}
        self._layer_states: tuple[LayerState, ...] = ()
        self._report_task: asyncio.Task[None] | None = None
        # The publisher's data channels, mirrored on its viewers (set by the node's hub).
        self.data: DataChannelHub | None = None

    @property
    def live(self) -> bool:
        return self.publisher is not None

    @property
    def viewer_count(self) -> int:
        # An edge's upstream subscribes its further video sections as (session, key).
        return sum(not isinstance(viewer, tuple) for viewer in self.subscriptions)

    def set_publisher(self, publisher: object | None) -> None:
        had = self.publisher is not None
        self.publisher = publisher
        if publisher is None:
            self.live_since = None
            self.idle_since = asyncio.get_event_loop().time()
            if had:
                self.left_at = self.idle_since
            for feed in (*self.feeds.values(), *self.layers.values()):
                feed.detach_source()
        else:
            self.live_since = time.time()
            self.idle_since = None

    def track_feeds(self, kind: str) -> list[TrackFeed]:
        """The feeds of one kind: the simulcast layers of video, else the one feed."""
        if kind == "video" and self.layers:
            return list(self.layers.values())
        return [self.feeds[kind]]

    def set_layers(self, rids: tuple[str, ...]) -> dict[str, TrackFeed]:
        """A publisher starts: its simulcast rids (empty: one video layer).

        Layers with the same rid as the previous publisher's are kept (their viewers stay
        and resynchronise at the next keyframe); the others' viewers move.
        """
        video = self.feeds["video"]
        for rid in [rid for rid in self.layers if rid not in rids]:
            gone = self.layers.pop(rid)
            gone.detach_source()
            for downtrack in list(gone.downtracks):
                gone.remove(downtrack)
        for rid in rids:
            if rid not in self.layers:
                feed = self.layers[rid] = TrackFeed("video", rid=rid)
                feed.delay_observer = video.delay_observer
        self.layers = {rid: self.layers[rid] for rid in rids}
        now = asyncio.get_event_loop().time()
        self._layer_states = self._states(now)
        for sub in self.subscriptions.values():
            self._place(sub, now)
        return dict(self.layers)

    def select_layer(self, viewer: object, rid: str | None) -> None:
        """Pin a viewer to a simulcast layer (None: the highest), from its next keyframe."""
        sub = self.subscriptions.get(viewer)
        if sub is None:
            return
        sub.layer = rid
        self._place(sub, asyncio.get_event_loop().time())

    def chosen_layer(self, now: float, rid: str | None = None) -> TrackFeed | None:
        """The layer a viewer asking for `rid` (None: the highest) belongs on now."""
        chosen = choose_layer(self._states(now), rid)
        return None if chosen is None else self.layers[chosen]

    def place_layers(self, now: float) -> None:
        """Move viewers whose layer is no longer the right one (layers came or went)."""
        states = self._states(now)
        if states == self._layer_states:
            return
        self._layer_states = states
        for sub in self.subscriptions.values():
            self._place(sub, now)

    def _states(self, now: float) -> tuple[LayerState, ...]:
        return tuple(
            LayerState(rid, feed.sending(now), feed.dimensions, feed.first_arrival)
            for rid, feed in self.layers.items()
        )

    def _place(self, sub: Subscription, now: float) -> None:
        entry = sub.downtracks.get("video")
        if entry is None:
            return
        downtrack = entry[0]
        if not self.layers:
            target = self.feeds["video"]
        else:
            chosen = self.chosen_layer(now, sub.layer)
            if chosen is None:  # nothing sends: stay, or wait on the pinned (else first) layer
                if downtrack.source in self.layers.values():
                    return
                rid = sub.layer if sub.layer in self.layers else next(iter(self.layers))
                chosen = self.layers[rid]
            target = chosen
        for feed in self.track_feeds("video"):
            feed.incoming.pop(downtrack, None)
        current = downtrack.source
        if current is target:
            return
        downtrack.request_keyframe = target.request_keyframe
        if current is None:
            target.add(downtrack)
        else:
            target.take_over(downtrack, current)

    def subscribe(
        self,
        viewer: object,
        kind: str,
        downtrack: DownTrack,
        report: ReportTarget,
        *,
        layer: str | None = None,
    ) -> None:
        """Start feeding a viewer's downtrack; video from simulcast `layer` if it sends."""
        sub = self.subscriptions.setdefault(viewer, Subscription())
        sub.downtracks[kind] = (downtrack, report)
        if kind == "video":
            sub.layer = layer
            self._place(sub, asyncio.get_event_loop().time())
        else:
            self.feeds[kind].add(downtrack)
        if self._report_task is None:
            self._report_task = asyncio.ensure_future(self._report_loop())

    def unsubscribe(self, viewer: object) -> None:
        sub = self.subscriptions.pop(viewer, None)
        if sub is None:
            return
        for kind, (downtrack, _) in sub.downtracks.items():
            for feed in self.track_feeds(kind):
                feed.remove(downtrack)
            if downtrack.source is not None:
                downtrack.source.remove(downtrack)
        if not self.subscriptions and self._report_task is not None:
            self._report_task.cancel()
            self._report_task = None

    async def _report_loop(self) -> None:
        loop = asyncio.get_event_loop()
        while True:
            now = loop.time()
            self.refresh_sender_reports(now)
            if self.layers:
                self.place_layers(now)
            await asyncio.sleep(SENDER_REPORT_INTERVAL)

    def refresh_sender_reports(self, now: float) -> None:
        clocks: dict[TrackFeed, tuple[int, float] | None] = {}
        for feed in (*self.feeds.values(), *self.layers.values()):
            clock = feed.clock_at(now)
            clocks[feed] = None if clock is None else (seconds_to_ntp(clock[0]), clock[1])
        for sub in self.subscriptions.values():
            for downtrack, report in sub.downtracks.values():
                clock = None if downtrack.source is None else clocks.get(downtrack.source)
                if clock is None:
                    continue
                rtp = downtrack.report_timestamp(int(clock[1]))
                if rtp is not None:
                    report(clock[0], rtp, downtrack.packets, downtrack.octets)

    def close(self) -> None:
        if self.data is not None:
            self.data.close()
        if self._report_task is not None:
            self._report_task.cancel()
            self._report_task = None
        for feed in (*self.feeds.values(), *self.layers.values()):
            feed.detach_source()
