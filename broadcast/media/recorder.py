"""One stream's recording: its publisher's RTP, depacketized (never decoded), into files.

The recorder subscribes to the stream like a viewer: a DownTrack per track gives it
continuous sequence numbers and timestamps from the first keyframe on, across simulcast
layer changes (it takes the highest layer). Frames are placed on one timeline through each
track's sender report mapping (RTP timestamp -> the publisher's NTP clock, RFC 3550
§6.4.1), which is what keeps audio and video in sync in the file. Each segment starts at a
video keyframe with timestamp zero; a new one starts once the current one is
BROADCAST_RECORD_SEGMENT_SECONDS long or BROADCAST_RECORD_SEGMENT_BYTES large.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from broadcast.media.segments import SegmentWriter, TrackSpec
from broadcast.protocol.depacketize import Depacketizer, Frame
from broadcast.protocol.rtp import NTP_UNIX_OFFSET, ntp_to_seconds
from broadcast.sfu.codecs import CodecSpec
from broadcast.sfu.downtrack import DownTrack, HistoryEntry
from broadcast.sfu.stream import Stream

__all__ = ["RECORDABLE", "Recording", "RecordingTrack", "file_extension"]

logger = logging.getLogger(__name__)

RECORDABLE = {"video": ("vp8", "h264"), "audio": ("opus",)}
_HEADER = struct.Struct("!BBHI")  # RTP fixed header up to the timestamp (RFC 3550 §5.1)
_MASK32 = 0xFFFFFFFF
# Frames held while the tracks' clocks are not known yet (the first sender report mapping
# comes within Stream's SENDER_REPORT_INTERVAL); a track without one after this long is
# left out of the segment.
CLOCK_WAIT = 2.0
PENDING_LIMIT = 2000
LAYER_SETTLE = 2.0  # seconds a simulcast stream's first file waits for its large layer


def file_extension(record_format: str, video_codec: str | None) -> str:
    """auto: VP8 (or audio only) in WebM, H.264 in Matroska; mp4 is for H.264 only."""
    if record_format == "mp4" and video_codec == "h264":
        return "mp4"
    if record_format == "mkv" or video_codec == "h264":
        return "mkv"
    return "webm"


# (codec, coded size, H.264 parameter sets in Annex B): a change starts a new segment.
_VideoConfig = tuple[str, tuple[int, int], bytes]


def _annex_b(*units: bytes) -> bytes:
    """NAL units with start codes (ITU-T H.264 Annex B)."""
    return b"".join(b"\x00\x00\x00\x01" + unit for unit in units if unit)


def _avcc_to_annex_b(data: bytes) -> tuple[bytes, set[int]]:
    """4-byte length-prefixed NAL units to Annex B, and the NAL unit types present."""
    units, types, pos = [], set(), 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        unit = data[pos + 4 : pos + 4 + size]
        if unit:
            units.append(unit)
            types.add(unit[0] & 0x1F)
        pos += 4 + size
    return _annex_b(*units), types


def _signed32(delta: int) -> int:
    delta &= _MASK32
    return delta - (1 << 32) if delta & 0x80000000 else delta


class RecordingTrack(DownTrack):
    """A DownTrack whose viewer is the recorder."""

    __slots__ = ()

    def replay(self, entries: Sequence[HistoryEntry], now: float) -> None:
        """Start from the cached keyframe with the frames' true timestamps (a viewer's
        replay squeezes them to catch up with live; a file keeps its timeline)."""
        if self.synced or not entries:
            return
        for i, (seq, ts, marker, pt, payload, _) in enumerate(entries):
            self.forward(pt, seq, ts, marker, payload, i == 0, b"", now)


@dataclass
class _Track:
    kind: str
    index: int  # in the recording's tracks, and so in each file's streams
    codecs: dict[int, str]  # payload type -> codec name
    clock_rate: int
    downtrack: RecordingTrack | None = None
    codec: str | None = None
    depacketizer: Depacketizer | None = None
    clock: tuple[float, int] | None = None  # latest (NTP seconds, RTP timestamp) mapping
    last_ts: int | None = None
    ext: int = 0  # the last frame's timestamp, unwrapped
    base: tuple[int, int] | None = None  # this segment's (unwrapped ts, ms) of the 1st frame
    held: tuple[bytes, int, bool] | None = None  # (data, ms, keyframe) awaiting its duration
    duration: int = 20  # ms, the last frame's
    frames: int = 0
    skipped: set[str] = field(default_factory=set)

    def wall(self, ext: int) -> float | None:
        """NTP seconds of the frame with unwrapped timestamp `ext`."""
        if self.clock is None or self.last_ts is None:
            return None
        ntp, rtp = self.clock
        return ntp + (ext - (self.ext + _signed32(rtp - self.last_ts))) / self.clock_rate


@dataclass
class _Segment:
    path: Path
    started: float  # NTP seconds of its first frame
    video: _VideoConfig | None
    size: int = 0


class Recording:
    """Records one stream until stopped (its publisher left, or the API said so)."""

    def __init__(
        self,
        stream: Stream,
        directory: Path,
        record_format: str,
        segment_seconds: float,
        segment_bytes: int,
    ) -> None:
        self.stream = stream
        self.directory = directory / stream.name
        self.record_format = record_format
        self.segment_seconds = segment_seconds
        self.segment_bytes = segment_bytes
        self.started_at = time.time()
        self.files: list[Path] = []
        self.writer = SegmentWriter(stream.name)
        self.segment: _Segment | None = None
        self._pending: list[tuple[_Track, Frame]] = []
        self._pending_since: float | None = None
        self._first_video_at: float | None = None  # loop time (simulcast start, above)
        self._loop = asyncio.get_event_loop()
        self.tracks: list[_Track] = []
        self.stopped = False
        for kind in ("video", "audio"):
            feeds = stream.track_feeds(kind)
            codecs = [c for c in feeds[0].codecs if not c.is_rtx]
            if not codecs:
                continue
            names = {c.payload_type: c.name.lower() for c in codecs}
            track = _Track(kind, len(self.tracks), names, codecs[0].clock_rate)
            self.tracks.append(track)
            track.downtrack = self._subscribe(track, feeds[0].codecs)

    def _subscribe(self, track: _Track, codecs: Sequence[CodecSpec]) -> RecordingTrack:
        downtrack = RecordingTrack(
            kind=track.kind,
            ssrc=0,
            rtx_ssrc=0,
            codecs=codecs,
            send=lambda data: self._on_packet(track, data),
            request_keyframe=lambda: None,
        )

        def report(ntp_timestamp: int, rtp_timestamp: int, packets: int, octets: int) -> None:
            track.clock = (ntp_to_seconds(ntp_timestamp), rtp_timestamp)
            self._drain()

        # A tuple key: the recorder is not one of the stream's viewers.
        self.stream.subscribe((self, "recording"), track.kind, downtrack, report)
        return downtrack

    def _on_packet(self, track: _Track, data: bytes) -> None:
        """One rewritten RTP packet: 12-byte header (no CSRC, no extension), payload."""
        _, second, seq, ts = _HEADER.unpack_from(data)
        codec = track.codecs.get(second & 0x7F)
        if codec is None or codec not in RECORDABLE[track.kind]:
            if str(codec) not in track.skipped:
                track.skipped.add(str(codec))
                logger.warning("%s codec %s is not recorded", track.kind, codec)
            return
        if codec != track.codec:
            track.codec, track.depacketizer = codec, Depacketizer(codec)
        depacketizer = track.depacketizer
        assert depacketizer is not None
        frames = depacketizer.push(seq, ts, bool(second & 0x80), data[12:])
        if depacketizer.need_keyframe:
            depacketizer.need_keyframe = False
            self._ask_keyframe(track)
        for frame in frames:
            self._pending.append((track, frame))
        if frames:
            if self._pending_since is None:
                self._pending_since = self._loop.time()
            self._drain()

    @staticmethod
    def _ask_keyframe(track: _Track) -> None:
        """Its feed coalesces the requests (one upstream per PLI_INTERVAL)."""
        if track.downtrack is not None:
            track.downtrack.request_keyframe()

    def _drain(self, force: bool = False) -> None:
        """Place the pending frames once every track's clock is known (or waited for, or
        `force`: the recording ends)."""
        if not self._pending or self.stopped:
            return
        waited = self._loop.time() - (self._pending_since or self._loop.time())
        if not force and waited < CLOCK_WAIT and any(t.clock is None for t in self.tracks):
            if len(self._pending) <= PENDING_LIMIT:
                return
        pending, self._pending, self._pending_since = self._pending, [], None
        for track, frame in pending:
            self._place(track, frame)

    def _place(self, track: _Track, frame: Frame) -> None:
        if track.last_ts is not None:
            track.ext += _signed32(frame.timestamp - track.last_ts)
        track.last_ts = frame.timestamp
        wall = track.wall(track.ext)
        if wall is None:
            return  # this track's clock never came: left out
        if track.kind == "video" or not any(t.kind == "video" for t in self.tracks):
            self._maybe_rotate(track, frame, wall)
        segment = self.segment
        if segment is None:
            return  # nothing before the first keyframe
        if track.base is None:
            start = round((wall - segment.started) * 1000)
            if start < 0:
                return  # audio from before the segment's first picture
            track.base = (track.ext, start)
        base_ext, base_ms = track.base
        ms = base_ms + round((track.ext - base_ext) * 1000 / track.clock_rate)
        data = frame.data
        if track.codec == "h264":
            data, types = _avcc_to_annex_b(data)
            if frame.keyframe and not {7, 8} <= types and segment.video is not None:
                data = segment.video[2] + data  # the parameter sets a decoder starts from
        self._write_held(track, ms)
        track.held = (data, ms, frame.keyframe)
        track.frames += 1
        segment.size += len(frame.data)

    def _write_held(self, track: _Track, next_ms: int | None) -> None:
        if track.held is None:
            return
        data, ms, keyframe = track.held
        if next_ms is not None:
            track.duration = max(1, next_ms - ms)
        self.writer.write(track.index, data, ms, track.duration, keyframe)
        track.held = None

    def _video_config(self, track: _Track) -> _VideoConfig:
        source = track.downtrack.source if track.downtrack is not None else None
        size = source.dimensions if source is not None and source.dimensions else (0, 0)
        depacketizer = track.depacketizer
        sets = b""
        if track.codec == "h264" and depacketizer is not None:
            sets = _annex_b(depacketizer.sps or b"", depacketizer.pps or b"")
        return str(track.codec), size, sets

    def _maybe_rotate(self, track: _Track, frame: Frame, wall: float) -> None:
        """Start a segment at a keyframe: the first one, or one at which the current
        segment is due to end or the picture's codec, size or parameter sets changed."""
        segment = self.segment
        video = self._video_config(track) if track.kind == "video" else None
        if segment is not None:
            # Media time since the segment's start, as the file's timestamps count it.
            elapsed = 0.0 if track.base is None else (track.ext - track.base[0]) / track.clock_rate
            due = (
                elapsed >= self.segment_seconds
                or segment.size >= self.segment_bytes
                or (frame.keyframe and video is not None and video != segment.video)
            )
            if not due:
                return
            if not frame.keyframe:
                self._ask_keyframe(track)
                return
        else:
            settled = self._layers_settled(track)
            if not frame.keyframe or settled is False:
                if settled is None:  # waited long enough: start on what there is
                    self._ask_keyframe(track)
                return
        self._close_segment()
        self._open_segment(wall, video)

    def _layers_settled(self, track: _Track) -> bool | None:
        """Before the first file of a simulcast stream: is the recorder on the layer it
        belongs on (the largest sending)? It starts on whichever sent first, often the
        small one; a file begun there would end a moment later, at the move to the large
        one (at that layer's keyframe). None: LAYER_SETTLE seconds have passed, go on."""
        layers = self.stream.layers.values()
        if not layers or track.downtrack is None:
            return True
        now = self._loop.time()
        if self._first_video_at is None:
            self._first_video_at = now
        if now - self._first_video_at >= LAYER_SETTLE:
            return None
        if track.downtrack.source is not self.stream.chosen_layer(now):
            return False
        return not any(track.downtrack in feed.incoming for feed in layers)

    def _open_segment(self, wall: float, video: _VideoConfig | None) -> None:
        ext = file_extension(self.record_format, video[0] if video else None)
        stamp = datetime.fromtimestamp(wall - NTP_UNIX_OFFSET, UTC).strftime("%Y%m%d-%H%M%S")
        path = self.directory / f"{self.stream.name}_{stamp}.{ext}"
        n = 1
        while path.exists() or path in self.files:
            path = self.directory / f"{self.stream.name}_{stamp}_{n}.{ext}"
            n += 1
        specs = []
        for track in self.tracks:
            track.base = None
            if track.kind == "video" and video is not None:
                codec, (width, height), _ = video
                specs.append(TrackSpec("video", codec, width, height))
            else:
                specs.append(TrackSpec("audio", "opus"))
        self.segment = _Segment(path, wall, video)
        self.files.append(path)
        self.writer.open(path, specs)
        logger.info("recording %s to %s", self.stream.name, path)

    def _close_segment(self) -> None:
        if self.segment is None:
            return
        for track in self.tracks:
            self._write_held(track, None)
        self.segment = None

    def stop(self) -> None:
        """Finish the current file and let the writer thread end."""
        if self.stopped:
            return
        self.stream.unsubscribe((self, "recording"))
        for track in self.tracks:  # what waited behind a gap that will not be filled now
            if track.depacketizer is not None:
                self._pending += [(track, f) for f in track.depacketizer.flush()]
        self._drain(force=True)
        self.stopped = True
        self._close_segment()
        self.writer.close()

    async def wait_closed(self, timeout: float = 10.0) -> bool:
        """After stop(): wait until the last file is complete on disk."""
        return await asyncio.to_thread(self.writer.join, timeout)

    @property
    def frames_dropped(self) -> int:
        """Lost or damaged on the way in, or refused by a disk too slow."""
        lost = sum(t.depacketizer.frames_dropped for t in self.tracks if t.depacketizer)
        return lost + self.writer.dropped

    @property
    def current_file(self) -> Path | None:
        return None if self.segment is None else self.segment.path

    def state(self) -> dict[str, object]:
        return {
            "active": not self.stopped,
            "started_at": self.started_at,
            "file": None if self.segment is None else self.segment.path.name,
            "segments": len(self.files),
            "frames": {t.kind: t.frames for t in self.tracks},
            "frames_dropped": self.frames_dropped,
            "bytes": self.writer.bytes_written,
            "errors": self.writer.errors,
        }
