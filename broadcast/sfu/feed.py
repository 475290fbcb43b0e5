"""One track of a stream (audio or video): the publisher's packets in, viewers out.

A feed outlives its publisher: when a publisher restarts, the new one is attached as a
new *source generation* and every viewer's DownTrack resynchronises at its next keyframe.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from time import perf_counter

from broadcast.protocol.dimensions import keyframe_dimensions
from broadcast.protocol.keyframes import is_keyframe_start
from broadcast.protocol.rtp import abs_send_time, abs_send_time_bytes, ntp_to_seconds
from broadcast.sfu.codecs import CodecSpec
from broadcast.sfu.downtrack import DownTrack, HistoryEntry

__all__ = [
    "GOP_CACHE_BYTES",
    "HISTORY_SIZE",
    "KEYFRAME_WAIT",
    "LAYER_TIMEOUT",
    "PLI_ANSWER_LIMIT",
    "PLI_INTERVAL",
    "REPLAY_AFTER",
    "TrackFeed",
]

logger = logging.getLogger(__name__)

# Packets kept for NACK: ~4 s of 2.5 Mbit/s video. A power of two (index = seq % size).
HISTORY_SIZE = 1024
# At most one keyframe request upstream per interval (RFC 4585 §3.5.2 asks for restraint;
# a keyframe costs the publisher 5-10x a delta frame).
PLI_INTERVAL = 0.5
NTP_UNIX_OFFSET = 2208988800
# The last keyframe and everything after it, for publishers that ignore PLI (OBS): a
# viewer still waiting REPLAY_AFTER seconds after joining starts from this cache. Bounded:
# a longer GOP is not cached (the viewer then waits for the publisher's next keyframe).
GOP_CACHE_BYTES = 4_000_000
REPLAY_AFTER = 0.25
# A keyframe within this long of a request counts as its answer.
PLI_ANSWER_LIMIT = 0.25
# A new viewer waits (up to REPLAY_AFTER) for a fresh keyframe when the publisher's answer
# to the pending request is expected within this long, from how fast it answered the last
# one, or when that is not known yet. Otherwise (OBS ignores PLI; a coalesced request
# waits up to PLI_INTERVAL) it starts from the cache at once: a picture now beats a
# fresher one later, and the cache is small when keyframes are frequent.
KEYFRAME_WAIT = 0.1
# A feed that has sent nothing for this long is not sending: a simulcast encoder dropped
# the layer (bandwidth or CPU), and its viewers move to another layer.
LAYER_TIMEOUT = 2.0
# Viewers waiting to switch to this feed (a simulcast layer) repeat the keyframe request
# this often until it comes.
SWITCH_PLI_RETRY = 1.0


class TrackFeed:
    """Fans one publisher track out to many DownTracks; keeps the NACK history."""

    def __init__(
        self, kind: str, *, rid: str | None = None, now: Callable[[], float] | None = None
    ) -> None:
        self.kind = kind
        self.rid = rid  # the simulcast layer (RFC 8851 rid); None for a single-layer track
        self.video = kind == "video"
        self._now = now or asyncio.get_event_loop().time
        self.downtracks: list[DownTrack] = []
        # Downtracks that move here from another layer at this layer's next keyframe.
        self.incoming: dict[DownTrack, TrackFeed] = {}
        self.history: list[HistoryEntry | None] = [None] * HISTORY_SIZE
        self.generation = 0
        self.codecs: list[CodecSpec] = []
        self.clock_rate = 90000 if self.video else 48000
        self._codec_names: dict[int, str] = {}
        self._requester: Callable[[int], None] | None = None
        self.media_ssrc: int | None = None
        self.last_pt: int | None = None
        self._last_pli = -PLI_INTERVAL
        self._pli_timer: asyncio.TimerHandle | None = None
        self._pli_unanswered_since: float | None = None
        # Seconds from the last request to its keyframe; None: unknown or unanswered.
        self.pli_answer_s: float | None = None
        self.pli_ignored = False
        # Publisher clock: last SR as (NTP seconds, RTP timestamp, local arrival time).
        self.sender_report: tuple[float, int, float] | None = None
        self.last_arrival: float | None = None
        self.first_arrival: float | None = None
        self.last_timestamp = 0
        self.packets = 0
        self.octets = 0
        self._rate_mark: tuple[float, int] = (-1.0, 0)
        self._rate = 0
        self.keyframes = 0
        self.keyframe_requests = 0
        # Coded picture size, read from keyframe headers (never decoded).
        self.dimensions: tuple[int, int] | None = None
        self.gop: list[HistoryEntry] | None = None
        self._gop_bytes = 0
        self.replays = 0
        # Called with the seconds one packet took from arrival to its last viewer.
        self.delay_observer: Callable[[float], None] | None = None

    @property
    def active_codec(self) -> str | None:
        """The MIME type of what the publisher sends now (first negotiated until then)."""
        for codec in self.codecs:
            if codec.payload_type == self.last_pt or (self.last_pt is None and not codec.is_rtx):
                return codec.mime
        return None

    def attach_source(
        self, codecs: Sequence[CodecSpec], request_keyframe: Callable[[int], None]
    ) -> None:
        """A publisher starts feeding this track (first publisher or a restart)."""
        self.generation += 1
        self.codecs = list(codecs)
        self._codec_names = {c.payload_type: c.name.lower() for c in codecs if not c.is_rtx}
        for codec in codecs:
            if not codec.is_rtx:
                self.clock_rate = codec.clock_rate
                break
        self._requester = request_keyframe
        self.media_ssrc = None
        self.sender_report = None
        self.last_arrival = None
        self.first_arrival = None
        self.gop = None
        self._pli_unanswered_since, self.pli_answer_s, self.pli_ignored = None, None, False
        for downtrack in self.downtracks:
            downtrack.set_source(self.codecs)

    def detach_source(self) -> None:
        self._requester = None
        self.media_ssrc = None
        self.gop = None  # a viewer joining between publishers must not get stale pictures
        if self._pli_timer is not None:
            self._pli_timer.cancel()
            self._pli_timer = None

    def add(self, downtrack: DownTrack) -> None:
        downtrack.set_source(self.codecs)
        downtrack.source = self
        self.downtracks.append(downtrack)
        if self.video:
            self.request_keyframe()
            if self.gop and self._fresh_keyframe_in() > KEYFRAME_WAIT:
                self._replay(downtrack)
            else:
                asyncio.get_event_loop().call_later(REPLAY_AFTER, self._replay, downtrack)

    def _fresh_keyframe_in(self) -> float:
        """Seconds until a keyframe answering the pending request is expected (inf: never)."""
        now = self._now()
        self._check_pli_answer(now)
        if self.pli_ignored:
            return math.inf
        answer = self.pli_answer_s
        if answer is None:  # not known yet: wait as for a prompt answer
            return 0.0
        if self._pli_timer is not None:  # coalesced: asked at _last_pli + PLI_INTERVAL
            return self._last_pli + PLI_INTERVAL + answer - now
        if self._pli_unanswered_since is not None:
            return self._pli_unanswered_since + answer - now
        return 0.0  # no request outstanding: nothing to wait for but live packets

    def _replay(self, downtrack: DownTrack) -> None:
        """Start a viewer that is still waiting from the cached keyframe onwards."""
        if downtrack.synced or downtrack not in self.downtracks or not self.gop:
            return
        downtrack.replay(self.gop, self._now())
        self.replays += 1

    def remove(self, downtrack: DownTrack) -> None:
        if downtrack in self.downtracks:
            self.downtracks.remove(downtrack)
            downtrack.source = None
        self.incoming.pop(downtrack, None)

    @property
    def has_source(self) -> bool:
        return self._requester is not None

    def rate_bps(self, now: float) -> int:
        """Ingest bit/s over the last two seconds or more (what a layer costs a viewer;
        long enough that a keyframe does not look like a bigger layer)."""
        since, octets = self._rate_mark
        if now - since >= 2.0:
            self._rate = round((self.octets - octets) * 8 / (now - since))
            self._rate_mark = (now, self.octets)
        return self._rate

    def sending(self, now: float) -> bool:
        last = self.last_arrival
        return self.has_source and last is not None and now - last < LAYER_TIMEOUT

    def take_over(self, downtrack: DownTrack, previous: TrackFeed) -> None:
        """Move a viewer here from another layer at this layer's next keyframe.

        Until then it keeps receiving `previous`; then DownTrack.set_source resynchronises
        it, so its SSRC, sequence numbers and timestamps run on (RFC 3550 §5.1). A viewer
        that is not receiving anything yet moves at once.
        """
        if not downtrack.synced or not previous.has_source:
            previous.remove(downtrack)
            self.add(downtrack)
            return
        self.incoming[downtrack] = previous
        self.request_keyframe()

    def _switch_incoming(self) -> None:
        for downtrack, previous in self.incoming.items():
            downtrack.set_source(self.codecs)
            previous.remove(downtrack)
            downtrack.source = self
            downtrack.request_keyframe = self.request_keyframe
            self.downtracks.append(downtrack)
        self.incoming.clear()

    def on_rtp(
        self, pt: int, seq: int, ts: int, marker: bool, payload: bytes, ssrc: int, now: float
    ) -> None:
        """One publisher packet (SRTP-decrypted, RTX-unwrapped): store it, fan it out."""
        started = perf_counter()
        slot = seq % HISTORY_SIZE
        previous = self.history[slot]
        if previous is not None and previous[0] == seq and previous[5] == self.generation:
            return  # a duplicate (late original after its RTX copy): sent already
        keyframe = False
        if self.video:
            codec = self._codec_names.get(pt)
            if codec is not None and is_keyframe_start(codec, payload):
                keyframe = True
                self.keyframes += 1
                self._check_pli_answer(now, keyframe=True)
                self.dimensions = keyframe_dimensions(codec, payload) or self.dimensions
                if self.incoming:
                    self._switch_incoming()
            elif self.incoming and now - self._last_pli >= SWITCH_PLI_RETRY:
                # Viewers wait to switch here: ask again (a sender may drop a request,
                # e.g. libwebrtc's keyframe requests closer than 300 ms on any layer).
                self.request_keyframe()
        self.media_ssrc = ssrc
        self.last_pt = pt
        entry = (seq, ts, marker, pt, payload, self.generation)
        self.history[slot] = entry
        if self.video:
            self._cache(entry, keyframe)
        self.last_arrival = now
        if self.first_arrival is None:
            self.first_arrival = now
        self.last_timestamp = ts
        self.packets += 1
        self.octets += len(payload)
        stamp = abs_send_time_bytes(abs_send_time(now))
        for downtrack in self.downtracks:
            downtrack.forward(pt, seq, ts, marker, payload, keyframe, stamp, now)
        if self.delay_observer is not None:
            self.delay_observer(perf_counter() - started)

    def _cache(self, entry: HistoryEntry, keyframe: bool) -> None:
        if keyframe:
            self.gop = [entry]
            self._gop_bytes = len(entry[4])
        elif self.gop is not None:
            self._gop_bytes += len(entry[4])
            if self._gop_bytes > GOP_CACHE_BYTES:
                self.gop = None
            else:
                self.gop.append(entry)

    def on_sender_report(self, ntp_timestamp: int, rtp_timestamp: int, now: float) -> None:
        self.sender_report = (ntp_to_seconds(ntp_timestamp), rtp_timestamp, now)

    def on_nack(self, downtrack: DownTrack, lost: Sequence[int]) -> None:
        downtrack.on_nack(lost, self.history, self.generation)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, coalescing requests within PLI_INTERVAL."""
        if self._requester is None or self._pli_timer is not None:
            return
        wait = self._last_pli + PLI_INTERVAL - self._now()
        if wait <= 0:
            self._send_pli()
        else:
            self._pli_timer = asyncio.get_event_loop().call_later(wait, self._deferred_pli)

    def _deferred_pli(self) -> None:
        self._pli_timer = None
        self._send_pli()

    def _check_pli_answer(self, now: float, keyframe: bool = False) -> None:
        """Has the publisher answered the outstanding keyframe request (in time)?"""
        since = self._pli_unanswered_since
        if since is None:
            return
        if keyframe and now - since <= PLI_ANSWER_LIMIT:
            self.pli_answer_s, self.pli_ignored = now - since, False
        elif keyframe or now - since > PLI_ANSWER_LIMIT:
            self.pli_answer_s, self.pli_ignored = None, True
        else:
            return
        self._pli_unanswered_since = None

    def _send_pli(self) -> None:
        if self._requester is None or self.media_ssrc is None:
            # Nothing received yet: the publisher's first frame is a keyframe anyway.
            return
        self._last_pli = self._now()
        self._check_pli_answer(self._last_pli)
        if self._pli_unanswered_since is None:
            self._pli_unanswered_since = self._last_pli
        self.keyframe_requests += 1
        self._requester(self.media_ssrc)

    def clock_at(self, now: float) -> tuple[float, float] | None:
        """(NTP seconds, publisher RTP timestamp) for the instant `now`.

        From the publisher's last sender report when there is one (so audio and video,
        both mapped through the publisher's own NTP clock, stay in sync: RFC 3550 §6.4.1),
        else from the arrival of the last packet.
        """
        if self.sender_report is not None:
            ntp, rtp, arrived = self.sender_report
            elapsed = now - arrived
            return ntp + elapsed, rtp + elapsed * self.clock_rate
        if self.last_arrival is None:
            return None
        elapsed = now - self.last_arrival
        return self._wall(now), self.last_timestamp + elapsed * self.clock_rate

    def _wall(self, now: float) -> float:
        return time.time() + NTP_UNIX_OFFSET - (self._now() - now)
