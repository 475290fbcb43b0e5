"""One viewer's copy of one track: RTP header rewriting, retransmission, its counters.

The hot path is `DownTrack.forward`, called once per publisher packet per viewer. It
allocates one bytes object (the packet) and never awaits.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from broadcast.protocol import vp8
from broadcast.protocol.rtp import rtx_payload
from broadcast.sfu.codecs import CodecSpec, payload_type_map

if TYPE_CHECKING:
    from broadcast.sfu.feed import TrackFeed

__all__ = ["DownTrack", "HistoryEntry"]

# (publisher sequence, timestamp, marker, payload type, payload, source generation)
HistoryEntry = tuple[int, int, bool, int, bytes, int]

_HEADER = struct.Struct("!BBHII")
_MASK16 = 0xFFFF
_MASK32 = 0xFFFFFFFF
# RFC 8285 §4.2 one-byte header block holding one 3-byte element (abs-send-time).
_EXT_PROFILE = b"\xbe\xde\x00\x01"
# Replayed frames are stamped this far apart (1 ms at 90 kHz) so that a decoder runs
# through them at once and reaches the live picture.
_REPLAY_STEP = 90
_MIN_RESEND_INTERVAL = 0.02  # seconds; the round trip when it is shorter or unknown
_RESENT_MEMORY = 512
_NACKED_MEMORY = 4096
_RTX_MIN_BUDGET = 16_000  # bytes a second of retransmission any viewer may have
# Padding cycles over this many of the latest packets sent.
_PAD_WINDOW = 16


class _Segment(NamedTuple):
    """How one earlier source's packets were numbered for this viewer."""

    history: Sequence[HistoryEntry | None]
    gen: int
    first: int  # the first sequence number sent from it
    seq_off: int
    ts_off: int
    pic_off: int
    tl0_off: int
    pt_map: dict[int, tuple[int, int | None]]


class DownTrack:
    """Rewrites SSRC, payload type, sequence number and timestamp for one viewer.

    Sequence numbers and timestamps stay continuous when the source changes (publisher
    restart, later simulcast layer switch): the first packet after a change continues
    from the last one sent (RFC 3550 §5.1), the timestamp advanced by the wall-clock gap.
    A video downtrack starts, and restarts after a source change, only at a keyframe.
    """

    __slots__ = (
        "_ext_prefix",
        "_pad_back",
        "_past",
        "_resent",
        "_rtx_budget",
        "_rtx_seq",
        "clock_rate",
        "codecs",
        "fraction_lost",
        "jitter",
        "kind",
        "last_payload",
        "last_seq",
        "last_time",
        "last_ts",
        "nacked",
        "nacks",
        "octets",
        "packets",
        "packets_lost",
        "padding_octets",
        "pic_off",
        "plis",
        "pt_map",
        "request_keyframe",
        "resent_octets",
        "retransmits",
        "rtt",
        "rtx_ssrc",
        "send",
        "seq_off",
        "source",
        "ssrc",
        "sync_seq",
        "synced",
        "tl0_off",
        "ts_off",
        "video",
        "vp8",
    )

    def __init__(
        self,
        *,
        kind: str,
        ssrc: int,
        rtx_ssrc: int,
        codecs: Sequence[CodecSpec],
        send: Callable[[bytes], None],
        request_keyframe: Callable[[], None],
        abs_send_time_id: int | None = None,
    ) -> None:
        self.kind = kind
        self.video = kind == "video"
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.codecs = list(codecs)
        self.send = send
        self.request_keyframe = request_keyframe
        self._ext_prefix = (
            b"" if abs_send_time_id is None else _EXT_PROFILE + bytes([abs_send_time_id << 4 | 2])
        )
        self.pt_map: dict[int, tuple[int, int | None]] = {}
        # The feed (publisher track or simulcast layer) this viewer receives now.
        self.source: TrackFeed | None = None
        self.clock_rate = 90000 if self.video else 48000
        self.synced = False
        self.seq_off = 0
        self.ts_off = 0
        # Start below 2^15 like aiortc does, so SRTP's rollover guess is never confused.
        self.last_seq = random.randint(0, 0x7FFF)
        # The first sequence number sent from the current source: NACKs for earlier ones
        # name packets of another source, which this source's history cannot answer.
        self.sync_seq = self.last_seq
        self.last_ts = random.getrandbits(32)
        self.last_time: float | None = None
        self._rtx_seq = random.randint(0, 0x7FFF)
        self._pad_back = 0
        self._resent: dict[int, float] = {}  # sequence number -> when last resent
        self._rtx_budget = (-math.inf, 0, 0)  # (since, octets, resent_octets) then
        self.resent_octets = 0
        self.rtt = 0.0  # seconds, from the viewer's receiver reports
        self._past: _Segment | None = None  # the previous source's mapping, for NACKs
        self.padding_octets = 0
        self.packets = 0
        self.octets = 0
        self.retransmits = 0
        self.nacks = 0
        # Distinct sequence numbers NACKed since the ABR policy last looked (sfu/abr.py).
        self.nacked: set[int] = set()
        self.plis = 0
        # From the viewer's receiver reports (RFC 3550 §6.4.1), for stats and ABR.
        self.fraction_lost = 0.0
        self.packets_lost = 0
        self.jitter = 0.0
        # VP8 PictureID/TL0PICIDX continuity across sources (protocol/vp8.py): the last
        # payload sent, and the offsets applied to the current source's numbers.
        self.vp8 = False
        self.last_payload: bytes | None = None
        self.pic_off = 0
        self.tl0_off = 0

    def set_source(self, publisher_codecs: Sequence[CodecSpec]) -> None:
        """A new source (publisher, layer) feeds this track from its next keyframe on:
        remap payload types, resync. Call before `source` changes."""
        if self.synced and self.source is not None:
            self._past = _Segment(
                self.source.history,
                self.source.generation,
                self.sync_seq,
                self.seq_off,
                self.ts_off,
                self.pic_off,
                self.tl0_off,
                self.pt_map,
            )
        self.pt_map = payload_type_map(publisher_codecs, self.codecs)
        for codec in publisher_codecs:
            if not codec.is_rtx:
                self.clock_rate = codec.clock_rate
                self.vp8 = self.video and codec.name.lower() == "vp8"
                break
        self.synced = False

    def forward(
        self,
        pt: int,
        seq: int,
        ts: int,
        marker: bool,
        payload: bytes,
        keyframe: bool,
        abs_send_time: bytes,
        now: float,
    ) -> None:
        if not self.synced:
            if self.video and not keyframe:
                return
            self._resync(seq, ts, now, payload)
        mapped = self.pt_map.get(pt)
        if mapped is None:
            return
        if self.vp8:
            if self.pic_off or self.tl0_off:
                payload = vp8.rewrite(payload, self.pic_off, self.tl0_off)
            self.last_payload = payload
        out_seq = (seq + self.seq_off) & _MASK16
        out_ts = (ts + self.ts_off) & _MASK32
        if self._ext_prefix:
            data = (
                _HEADER.pack(0x90, marker << 7 | mapped[0], out_seq, out_ts, self.ssrc)
                + self._ext_prefix
                + abs_send_time
                + payload
            )
        else:
            data = _HEADER.pack(0x80, marker << 7 | mapped[0], out_seq, out_ts, self.ssrc) + payload
        self.send(data)
        if (out_seq - self.last_seq) & _MASK16 < 0x8000:
            self.last_seq = out_seq
            self.last_ts = out_ts
            self.last_time = now
        self.packets += 1
        self.octets += len(payload)

    def replay(self, entries: Sequence[HistoryEntry], now: float) -> None:
        """Start from cached packets: a keyframe and what followed it (in arrival order).

        Sequence numbers run on into live packets; the cached frames' timestamps are pulled
        together just before the newest one, which keeps its true place on the timeline,
        so the picture catches up with live at once and lip sync holds afterwards.
        """
        if self.synced or not entries:
            return
        newest = entries[-1][1]
        self._resync(entries[0][0], newest, now, entries[0][4])
        frames: dict[int, int] = {}
        for entry in entries:
            frames.setdefault(entry[1], len(frames))
        last = len(frames) - 1
        for seq, ts, marker, pt, payload, _ in entries:
            mapped = self.pt_map.get(pt)
            if mapped is None:
                continue
            out_ts = (newest - (last - frames[ts]) * _REPLAY_STEP + self.ts_off) & _MASK32
            out_seq = (seq + self.seq_off) & _MASK16
            if self.vp8:
                payload = self._vp8_payload(payload)
                self.last_payload = payload
            self.send(
                _HEADER.pack(0x80, marker << 7 | mapped[0], out_seq, out_ts, self.ssrc) + payload
            )
            self.last_seq = out_seq
            self.packets += 1
            self.octets += len(payload)
        self.last_ts = (newest + self.ts_off) & _MASK32
        self.last_time = now

    def _resync(self, seq: int, ts: int, now: float, payload: bytes) -> None:
        if self.vp8:
            self._continue_picture_ids(payload)
        if self.last_time is None:
            gap = 0
        else:
            gap = max(1, int((now - self.last_time) * self.clock_rate))
        self.seq_off = (self.last_seq + 1 - seq) & _MASK16
        self.sync_seq = (self.last_seq + 1) & _MASK16
        self.ts_off = (self.last_ts + gap - ts) & _MASK32
        self.synced = True

    def _continue_picture_ids(self, keyframe: bytes) -> None:
        """Offsets that make this keyframe's PictureID and TL0PICIDX follow the last ones
        sent (RFC 7741 §4.2), so a switch of layer or publisher looks like one encoder."""
        new = vp8.read_fields(keyframe)
        old = None if self.last_payload is None else vp8.read_fields(self.last_payload)
        self.pic_off = self.tl0_off = 0
        if old is None:
            return
        if new.picture_id is not None and old.picture_id is not None:
            mask = 0x7FFF if new.long_id else 0x7F
            self.pic_off = (old.picture_id + 1 - new.picture_id) & mask
        if new.tl0picidx is not None and old.tl0picidx is not None:
            self.tl0_off = (old.tl0picidx + 1 - new.tl0picidx) & 0xFF

    def _vp8_payload(self, payload: bytes) -> bytes:
        if self.pic_off or self.tl0_off:
            return vp8.rewrite(payload, self.pic_off, self.tl0_off)
        return payload

    def on_nack(
        self, lost: Sequence[int], history: Sequence[HistoryEntry | None], gen: int
    ) -> None:
        """Answer a Generic NACK (RFC 4585 §6.2.1) from the packet history, as RTX.

        Packets sent before the last change of source (a layer switch) are answered from
        that source's history: a receiver's jitter buffer may wait for them before it lets
        the new layer's keyframe through. Without a negotiated RTX payload type there is no
        way to resend: SRTP would reject a repeated sequence number (RFC 3711 §3.3.2), so
        the loss stands.
        """
        self.nacks += 1
        if len(self.nacked) < _NACKED_MEMORY:
            self.nacked.update(lost)
        past = self._past
        # The current source's packets start at sync_seq (once the first one was sent).
        start = self.sync_seq if self.synced else (self.last_seq + 1) & _MASK16
        current = _Segment(
            history, gen, start, self.seq_off, self.ts_off, self.pic_off, self.tl0_off, self.pt_map
        )
        for out_seq in lost:
            if self.synced and (out_seq - start) & _MASK16 < 0x8000:
                self._resend(out_seq, current)
            elif past is not None and (out_seq - past.first) & _MASK16 < (
                (start - past.first) & _MASK16
            ):
                self._resend(out_seq, past)

    def _resend(self, out_seq: int, segment: _Segment) -> None:
        history = segment.history
        pub_seq = (out_seq - segment.seq_off) & _MASK16
        entry = history[pub_seq % len(history)]
        if entry is None or entry[0] != pub_seq or entry[5] != segment.gen:
            return
        mapped = segment.pt_map.get(entry[3])
        if mapped is None or mapped[1] is None:
            return
        # A packet is resent at most once per round trip, as libwebrtc's packet history
        # does: a receiver repeating its NACK before the first copy could arrive would
        # otherwise multiply the traffic on a link that is already losing packets.
        now = time.monotonic()
        if now - self._resent.get(out_seq, -math.inf) < max(self.rtt, _MIN_RESEND_INTERVAL):
            return
        if len(self._resent) >= _RESENT_MEMORY:
            self._resent = {seq: t for seq, t in self._resent.items() if now - t < 1.0}
        # Retransmissions never take more than the media itself did over the last second
        # (libwebrtc limits them to its target bitrate likewise): NACKs cannot amplify.
        since, media, resent = self._rtx_budget
        if now - since >= 1.0:
            since, media, resent = self._rtx_budget = (now, self.octets, self.resent_octets)
        if self.resent_octets - resent > max(self.octets - media, _RTX_MIN_BUDGET):
            return
        self._resent[out_seq] = now
        self._rtx_seq = (self._rtx_seq + 1) & _MASK16
        out_ts = (entry[1] + segment.ts_off) & _MASK32
        payload = entry[4]
        if self.vp8 and (segment.pic_off or segment.tl0_off):
            payload = vp8.rewrite(payload, segment.pic_off, segment.tl0_off)
        # RFC 4588 §4: RTX payload = original sequence number + original payload.
        self.send(
            _HEADER.pack(0x80, entry[2] << 7 | mapped[1], self._rtx_seq, out_ts, self.rtx_ssrc)
            + rtx_payload(out_seq, payload)
        )
        self.retransmits += 1
        self.resent_octets += len(payload)

    def pad(self, budget: int, abs_send_time: bytes) -> int:
        """Send about `budget` bytes of padding; answer how many were sent (0: none possible).

        Padding is RTX copies (RFC 4588) of the latest packets sent, cycling over the last
        `_PAD_WINDOW`, as libwebrtc pads: a receiver drops them as duplicates, a bandwidth
        estimator counts them (they carry abs-send-time too). Used to probe a viewer's link
        before moving it to a bigger layer (sfu/abr.py).
        """
        source = self.source
        if not self.synced or source is None:
            return 0
        history, gen = source.history, source.generation
        size = len(history)
        sent = 0
        for _ in range(_PAD_WINDOW):
            if sent >= budget:
                break
            out_seq = (self.last_seq - self._pad_back) & _MASK16
            self._pad_back = (self._pad_back + 1) % _PAD_WINDOW
            if (out_seq - self.sync_seq) & _MASK16 >= 0x8000:
                self._pad_back = 0
                continue
            pub_seq = (out_seq - self.seq_off) & _MASK16
            entry = history[pub_seq % size]
            if entry is None or entry[0] != pub_seq or entry[5] != gen:
                continue
            mapped = self.pt_map.get(entry[3])
            if mapped is None or mapped[1] is None:
                return sent
            self._rtx_seq = (self._rtx_seq + 1) & _MASK16
            out_ts = (entry[1] + self.ts_off) & _MASK32
            payload = rtx_payload(out_seq, self._vp8_payload(entry[4]) if self.vp8 else entry[4])
            first = 0x90 if self._ext_prefix else 0x80
            header = _HEADER.pack(
                first, entry[2] << 7 | mapped[1], self._rtx_seq, out_ts, self.rtx_ssrc
            )
            if self._ext_prefix:
                header += self._ext_prefix + abs_send_time
            self.send(header + payload)
            sent += len(payload)
        self.padding_octets += sent
        return sent

    def on_picture_loss(self) -> None:
        """The viewer lost a picture (PLI/FIR): ask the publisher, rate-limited upstream."""
        self.plis += 1
        self.request_keyframe()

    def on_receiver_report(self, fraction_lost: int, packets_lost: int, jitter: int) -> None:
        """A report block about this track: loss as a fraction, jitter in seconds."""
        self.fraction_lost = fraction_lost / 256
        self.packets_lost = packets_lost
        self.jitter = jitter / self.clock_rate

    def report_timestamp(self, publisher_rtp: int) -> int | None:
        """This viewer's RTP timestamp for a publisher timestamp, once media has flowed."""
        if not self.synced:
            return None
        return (publisher_rtp + self.ts_off) & _MASK32
