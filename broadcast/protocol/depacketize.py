"""RTP payloads of one track back into whole coded frames, for recording without decoding.

``Depacketizer.push`` takes a track's packets in arrival order (SRTP already removed) and
answers the frames they complete, ready for a muxer: VP8 frames, H.264 access units in AVCC
form, Opus packets. It never decodes and never raises on any payload bytes; a malformed
payload damages its frame, which is dropped.

Reordering is undone by a small buffer keyed by extended sequence number (RFC 3550 §A.1).
It has no timers, so it runs on packet counts alone: a gap stays open until more than
``REORDER_WINDOW`` packets wait behind it, then the missing ones count as lost. A packet
that arrives after that (a late retransmission) or twice is ignored. ``flush`` releases what
is still held at the end of the stream.

Video is recorded from a keyframe on. After a loss or a damaged frame every frame is dropped
until the next keyframe, and ``need_keyframe`` goes ``True`` for the caller to send a PLI
(RFC 4585 §6.3.1) and reset. The wait for the first keyframe does not set it.

- VP8: RFC 7741 §4.2 payload descriptor, RFC 6386 §9.1 frame tag
  https://www.rfc-editor.org/rfc/rfc7741
- H.264: RFC 6184 §5.6-5.8 (single NAL unit, STAP-A, FU-A), ISO/IEC 14496-15 §5.3 (AVCC)
  https://www.rfc-editor.org/rfc/rfc6184
- Opus: RFC 7587 §4.2, RFC 7845 §5.1 (identification header)
  https://www.rfc-editor.org/rfc/rfc7587  https://www.rfc-editor.org/rfc/rfc7845
"""

from __future__ import annotations

from typing import NamedTuple

from broadcast.protocol.keyframes import is_frame_start, is_keyframe_start

__all__ = ["REORDER_WINDOW", "Depacketizer", "Frame", "opus_head"]

REORDER_WINDOW = 64  # packets held behind a gap before it counts as lost

_CODECS = ("vp8", "h264", "opus")

# H.264 NAL unit types: ITU-T H.264 Table 7-1, RFC 6184 §5.4 Table 3.
_H264_IDR = 5
_H264_SPS = 7
_H264_PPS = 8
_H264_AUD = 9
_H264_STAP_A = 24
_H264_FU_A = 28


class Frame(NamedTuple):
    """One coded frame: what a muxer takes as one packet."""

    timestamp: int  # RTP timestamp of the frame, as received
    data: bytes  # VP8 frame; H.264 access unit in AVCC form; Opus packet
    keyframe: bool  # VP8 key frame; H.264 access unit with an IDR slice; Opus: always


class Depacketizer:
    """Reassembles the frames of one track from its RTP payloads.

    ``codec`` is the lower-case encoding name from the SDP rtpmap: ``"vp8"``, ``"h264"`` or
    ``"opus"``. ``frames_dropped`` counts frames discarded for loss or damage, not those
    skipped while waiting for the first keyframe.
    """

    def __init__(self, codec: str) -> None:
        if codec not in _CODECS:
            raise ValueError(f"cannot depacketize {codec!r}: expected one of {', '.join(_CODECS)}")
        self.codec = codec
        self.need_keyframe = False
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.frames_dropped = 0
        self._out: list[Frame] = []
        # Reorder buffer: extended sequence number -> (timestamp, marker, payload).
        self._next: int | None = None  # the extended sequence number released next
        self._held: dict[int, tuple[int, bool, bytes]] = {}
        self._stale = 0  # packets in a row from before _next
        # Video frame in assembly; _ts is None between frames.
        self._ts: int | None = None
        self._first = b""  # its first payload
        self._parts: list[bytes] = []  # VP8 partition data, or H.264 NAL units
        self._fu: bytearray | None = None  # RFC 6184 §5.8: a NAL unit being reassembled
        self._damaged = False
        self._after_gap = True  # packets may be missing just before the next frame's first
        self._unsure_start = True  # ... and before this frame's first
        self._waiting = codec != "opus"  # dropping until a keyframe a decoder can start at
        self._joining = self._waiting  # the wait for the first keyframe, with nothing lost

    def push(self, seq: int, timestamp: int, marker: bool, payload: bytes) -> list[Frame]:
        """Take one packet; answer the frames it completes, in order (often none)."""
        seq &= 0xFFFF
        if self._next is None:
            self._next = seq
        # RFC 3550 §A.1: the extended sequence number nearest to the one expected.
        ext = self._next + ((seq - self._next + 0x8000) & 0xFFFF) - 0x8000
        if ext < self._next:
            # A duplicate, or later than its gap was given up. A long run of these means the
            # sender's numbering jumped backwards: start again from here.
            self._stale += 1
            if self._stale <= REORDER_WINDOW:
                return []
            self._release(force=True)
            self._lost()
            self._next = ext
        self._stale = 0
        if ext not in self._held:
            self._held[ext] = (timestamp & 0xFFFFFFFF, marker, bytes(payload))
            self._release(force=False)
        return self._take()

    def flush(self) -> list[Frame]:
        """End of stream: release every held packet, gaps counted lost. A frame still
        waiting for its marker is dropped."""
        self._release(force=True)
        if self._ts is not None:
            self._ts = None
            self._count_drop()
        return self._take()

    def _take(self) -> list[Frame]:
        out, self._out = self._out, []
        return out

    def _release(self, force: bool) -> None:
        held = self._held
        while held:
            assert self._next is not None
            if self._next not in held:
                if not force and len(held) <= REORDER_WINDOW:
                    return
                self._next = min(held)
                self._lost()
            timestamp, marker, payload = held.pop(self._next)
            self._next += 1
            self._packet(timestamp, marker, payload)

    def _lost(self) -> None:
        if self.codec == "opus":
            return  # each packet is a frame: nothing else is spoiled
        self.need_keyframe = True
        self._waiting = True
        self._joining = False
        self._after_gap = True
        self._damaged = True  # the frame in assembly, if any
        self._fu = None

    def _packet(self, timestamp: int, marker: bool, payload: bytes) -> None:
        if self.codec == "opus":
            # RFC 7587 §4.2: one Opus packet per RTP packet; it has at least its TOC byte.
            if payload:
                self._out.append(Frame(timestamp, payload, True))
            else:
                self._count_drop()
            return
        if self._ts is not None and timestamp != self._ts:
            self._end_frame()  # the timestamp moved on without a marker bit
        if self._ts is None:
            self._ts = timestamp
            self._first = payload
            self._parts = []
            self._fu = None
            self._damaged = False
            self._unsure_start = self._after_gap
            self._after_gap = False
        if not self._damaged:
            try:
                self._damaged = not (
                    self._vp8(payload) if self.codec == "vp8" else self._h264(payload)
                )
            except IndexError:
                self._damaged = True  # truncated
        if marker:
            self._end_frame()

    def _vp8(self, p: bytes) -> bool:
        # RFC 7741 §4.2: |X|R|N|S|R|PID|; a frame's first packet has S=1, PID=0.
        if not self._parts and not is_frame_start("vp8", p):
            return False
        pos = 1
        if p[0] & 0x80:
            x = p[1]  # |I|L|T|K|RSV|
            pos = 2
            if x & 0x80:
                pos += 2 if p[2] & 0x80 else 1  # 15- or 7-bit PictureID
            if x & 0x40:
                pos += 1  # TL0PICIDX
            if x & 0x30:
                pos += 1  # |TID|Y|KEYIDX|
        if pos >= len(p):
            return False  # no VP8 payload after the descriptor
        self._parts.append(p[pos:])
        return True

    def _h264(self, p: bytes) -> bool:
        # RFC 6184 §5.3: NAL unit header |F|NRI|Type|; §5.4 Table 3 for the packet types.
        packet_type = p[0] & 0x1F
        if packet_type == _H264_FU_A:
            # RFC 6184 §5.8: FU indicator, FU header |S|E|R|Type|, then a fragment of the NAL
            # unit's payload; the NAL header is F and NRI of the indicator with Type.
            header = p[1]
            if header & 0x80:
                if self._fu is not None:
                    return False  # the previous NAL unit never ended
                self._fu = bytearray((p[0] & 0xE0 | header & 0x1F,))
            elif self._fu is None:
                return False  # a continuation whose start is missing
            self._fu += p[2:]
            if header & 0x40:
                nal, self._fu = bytes(self._fu), None
                return self._nal(nal)
            return True
        if self._fu is not None:
            return False  # the fragmented NAL unit never ended
        if packet_type == _H264_STAP_A:
            # RFC 6184 §5.7.1: STAP-A NAL header, then (16-bit size, NAL unit)+.
            pos = 1
            n = len(p)
            if n < 4:
                return False
            while pos < n:
                size = p[pos] << 8 | p[pos + 1]
                pos += 2
                if size == 0 or pos + size > n or not self._nal(p[pos : pos + size]):
                    return False
                pos += size
            return True
        # Single NAL unit packet (§5.6); STAP-B, MTAP and FU-B (interleaved mode) and the
        # reserved types are refused by _nal.
        return self._nal(p)

    def _nal(self, nal: bytes) -> bool:
        nal_type = nal[0] & 0x1F
        if not 0 < nal_type < _H264_STAP_A:
            return False
        if nal_type == _H264_SPS:
            self.sps = nal
        elif nal_type == _H264_PPS:
            self.pps = nal
        elif nal_type == _H264_AUD:
            return True  # delimits access units in a byte stream; AVCC does not need it
        self._parts.append(nal)
        return True

    def _end_frame(self) -> None:
        timestamp, parts, self._ts, self._parts = self._ts, self._parts, None, []
        if timestamp is None or self._damaged or self._fu is not None or not parts:
            self._fu = None
            self._count_drop()
            return
        if self.codec == "vp8":
            data = b"".join(parts)
            keyframe = is_keyframe_start("vp8", self._first)  # RFC 6386 §9.1: P=0
            startable = keyframe
        else:
            # ISO/IEC 14496-15 §5.3.2: each NAL unit after its 4-byte big-endian length.
            data = b"".join(len(nal).to_bytes(4, "big") + nal for nal in parts)
            idr = [nal for nal in parts if nal[0] & 0x1F == _H264_IDR]
            keyframe = bool(idr)
            startable = keyframe and self.sps is not None and self.pps is not None
            if self._unsure_start:
                # Packets may have been lost just before this one: only the first slice of
                # the IDR picture (first_mb_in_slice = 0, ue(v) "1", ITU-T H.264 §7.3.3)
                # shows that no slice is missing; a lost SPS or PPS is the one kept.
                startable &= is_frame_start("h264", self._first)
                startable &= any(len(nal) > 1 and nal[1] & 0x80 for nal in idr)
        if self._waiting:
            if not startable:
                if not self._joining:
                    self.frames_dropped += 1
                return
            self._waiting = self._joining = False
        self._out.append(Frame(timestamp, data, keyframe))

    def _count_drop(self) -> None:
        if self._joining:
            return  # e.g. the tail of a frame that began before the first packet
        self.frames_dropped += 1
        if self.codec != "opus":
            self.need_keyframe = True
            self._waiting = True


def opus_head(channels: int = 2, pre_skip: int = 312, sample_rate: int = 48000) -> bytes:
    """RFC 7845 §5.1 identification header with channel mapping family 0: the extradata of
    an Opus track in Matroska, MP4 or Ogg."""
    if channels not in (1, 2):
        raise ValueError("channel mapping family 0 carries 1 or 2 channels (RFC 7845 §5.1.1)")
    return (
        b"OpusHead"
        + bytes((1, channels))  # version, output channel count
        + pre_skip.to_bytes(2, "little")
        + sample_rate.to_bytes(4, "little")  # input sample rate, informational
        + b"\x00\x00"  # output gain, Q7.8 dB
        + b"\x00"  # channel mapping family 0: mono or stereo, no mapping table
    )
