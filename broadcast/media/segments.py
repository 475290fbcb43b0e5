"""Recording files: PyAV muxes coded frames into Matroska/WebM or fragmented MP4 segments.

Muxing runs on a thread of its own, fed by a queue, so a slow disk never stalls the event
loop that forwards media. Files are written so that a crash loses little: Matroska
clusters of at most a second each, flushed to the OS as they are written; fragmented MP4
with a fragment at each keyframe and at least every second. A segment that was closed
(publisher gone, rotation, shutdown) has its index and duration written too.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from broadcast.protocol.depacketize import opus_head

__all__ = ["EXTENSIONS", "QUEUE_LIMIT", "SegmentWriter", "TrackSpec"]

logger = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1000)  # milliseconds: Matroska's own unit (RFC 9559 §11.1)
QUEUE_LIMIT = 4000  # frames waiting for the disk; more are dropped and counted
# File extension -> (FFmpeg muxer, its options).
EXTENSIONS: dict[str, tuple[str, dict[str, str]]] = {
    # A new cluster at least every second; each packet flushed to the OS.
    "webm": ("webm", {"cluster_time_limit": "1000", "flush_packets": "1"}),
    "mkv": ("matroska", {"cluster_time_limit": "1000", "flush_packets": "1"}),
    # ISO/IEC 23000-19 style fragments: playable however the file ends.
    "mp4": (
        "mp4",
        {
            "movflags": "frag_keyframe+empty_moov+default_base_moof",
            "frag_duration": "1000000",
            "flush_packets": "1",
        },
    ),
}


@dataclass(frozen=True)
class TrackSpec:
    kind: str  # "audio" or "video"
    codec: str  # "vp8", "h264", "opus"
    width: int = 0
    height: int = 0


class SegmentWriter:
    """One thread writing one recording's segments, one after another."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"record-{name}", daemon=True)
        self._thread.start()
        self.dropped = 0  # frames the disk could not keep up with
        self.errors = 0  # frames or files FFmpeg refused
        self.bytes_written = 0

    def open(self, path: Path, tracks: list[TrackSpec]) -> None:
        """Start a new file (closing the current one); frames then refer to `tracks` by
        index."""
        self._queue.put(("open", path, tracks))

    def write(self, track: int, data: bytes, pts: int, duration: int, keyframe: bool) -> None:
        """A coded frame; `pts` and `duration` in milliseconds from the segment's start."""
        if self._queue.qsize() > QUEUE_LIMIT:
            self.dropped += 1
            return
        self._queue.put(("frame", track, data, pts, duration, keyframe))

    def close(self) -> None:
        """Close the current file; the thread then ends."""
        self._queue.put(("stop",))

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        container: Any = None
        streams: list[Any] = []
        while True:
            item = self._queue.get()
            if item[0] == "frame":
                if container is not None:
                    self._mux(container, streams, item)
                continue
            self._finish(container)
            container = None
            if item[0] == "stop":
                return
            _, path, tracks = item
            try:
                container, streams = _open(path, tracks)
            except (av.FFmpegError, OSError, ValueError):
                self.errors += 1
                logger.exception("could not start recording file %s", path)
                container, streams = None, []

    def _mux(self, container: Any, streams: list[Any], item: tuple[Any, ...]) -> None:
        _, track, data, pts, duration, keyframe = item
        packet = av.Packet(data)
        packet.stream = streams[track]
        packet.time_base = TIME_BASE
        packet.pts = packet.dts = pts
        packet.duration = duration
        packet.is_keyframe = keyframe
        try:
            container.mux(packet)
        except (av.FFmpegError, ValueError):
            self.errors += 1
            if self.errors == 1:
                logger.exception("the recording refused a frame")
        else:
            self.bytes_written += len(data)

    def _finish(self, container: Any) -> None:
        if container is not None:
            try:
                container.close()  # the trailer: index (Cues / mfra) and duration
            except (av.FFmpegError, OSError):
                self.errors += 1
                logger.exception("could not finish recording file %s", container.name)


def _open(path: Path, tracks: list[TrackSpec]) -> tuple[Any, list[Any]]:
    muxer, options = EXTENSIONS[path.suffix[1:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w", format=muxer, container_options=dict(options))
    streams = []
    for spec in tracks:
        if spec.kind == "video":
            # Packets as they are, no codec context. H.264 comes in Annex B with its
            # parameter sets; PyAV builds the avcC from the first keyframe's.
            stream = container.add_mux_stream(spec.codec, width=spec.width, height=spec.height)
        else:
            # An (idle) Opus encoder context, only to carry the OpusHead (RFC 7845 §5.1)
            # that Matroska and MP4 need as codec private data.
            stream = container.add_stream("libopus", rate=48000)
            stream.codec_context.extradata = opus_head()
        stream.time_base = TIME_BASE
        streams.append(stream)
    return container, streams
