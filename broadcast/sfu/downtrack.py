"""One viewer's copy of one track: RTP header rewriting, retransmission, its counters.

The hot path is `DownTrack.forward`, called once per publisher packet per viewer. It
allocates one bytes object (the packet) and never awaits.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

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


class DownTrack:
    """Rewrites SSRC, payload type, sequence number and timestamp for one viewer.

    Sequence numbers and timestamps stay continuous when the source changes (publisher
    restart, later simulcast layer switch): the first packet after a change continues
    from the last one sent (RFC 3550 §5.1), the timestamp advanced by the wall-clock gap.
    A video downtrack starts, and restarts after a source change, only at a keyframe.
    """

    __slots__ = (
        "_ext_prefix",
        "_rtx_seq",
        "clock_rate",
        "codecs",
        "fraction_lost",
        "jitter",
        "kind",
        "last_seq",
        "last_time",
        "last_ts",
        "nacks",
        "octets",
        "packets",
        "packets_lost",
        "plis",
        "pt_map",
        "request_keyframe",
        "retransmits",
        "rtx_ssrc",
        "send",
        "seq_off",
        "source",
        "ssrc",
        "sync_seq",
        "synced",
        "ts_off",
        "video",
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
        self.packets = 0
        self.octets = 0
        self.retransmits = 0
        self.nacks = 0
        self.plis = 0
        # From the viewer's receiver reports (RFC 3550 §6.4.1), for stats and ABR.
        self.fraction_lost = 0.0
        self.packets_lost = 0
        self.jitter = 0.0

    def set_source(self, publisher_codecs: Sequence[CodecSpec]) -> None:
        """A new source (publisher) feeds this track: remap payload types, resync."""
        self.pt_map = payload_type_map(publisher_codecs, self.codecs)
        for codec in publisher_codecs:
            if not codec.is_rtx:
                self.clock_rate = codec.clock_rate
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
            self._resync(seq, ts, now)
        mapped = self.pt_map.get(pt)
        if mapped is None:
            return
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
        self._resync(entries[0][0], newest, now)
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
            self.send(
                _HEADER.pack(0x80, marker << 7 | mapped[0], out_seq, out_ts, self.ssrc) + payload
            )
            self.last_seq = out_seq
            self.packets += 1
            self.octets += len(payload)
        self.last_ts = (newest + self.ts_off) & _MASK32
        self.last_time = now

    def _resync(self, seq: int, ts: int, now: float) -> None:
        if self.last_time is None:
            gap = 0
        else:
            gap = max(1, int((now - self.last_time) * self.clock_rate))
        self.seq_off = (self.last_seq + 1 - seq) & _MASK16
        self.sync_seq = (self.last_seq + 1) & _MASK16
        self.ts_off = (self.last_ts + gap - ts) & _MASK32
        self.synced = True

    def on_nack(
        self, lost: Sequence[int], history: Sequence[HistoryEntry | None], gen: int
    ) -> None:
        """Answer a Generic NACK (RFC 4585 §6.2.1) from the packet history, as RTX.

        Without a negotiated RTX payload type there is no way to resend: SRTP would
        reject a repeated sequence number (RFC 3711 §3.3.2), so the loss stands.
        """
        self.nacks += 1
        if not self.synced:
            return
        size = len(history)
        for out_seq in lost:
            if (out_seq - self.sync_seq) & _MASK16 >= 0x8000:
                continue
            pub_seq = (out_seq - self.seq_off) & _MASK16
            entry = history[pub_seq % size]
            if entry is None or entry[0] != pub_seq or entry[5] != gen:
                continue
            mapped = self.pt_map.get(entry[3])
            if mapped is None or mapped[1] is None:
                continue
            self._rtx_seq = (self._rtx_seq + 1) & _MASK16
            out_ts = (entry[1] + self.ts_off) & _MASK32
            # RFC 4588 §4: RTX payload = original sequence number + original payload.
            self.send(
                _HEADER.pack(0x80, entry[2] << 7 | mapped[1], self._rtx_seq, out_ts, self.rtx_ssrc)
                + rtx_payload(out_seq, entry[4])
            )
            self.retransmits += 1

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
