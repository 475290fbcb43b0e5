"""The node's recordings: which streams are recorded, and the files in BROADCAST_RECORD_DIR.

With BROADCAST_RECORD_ALL (the default) every stream published on this node is recorded
while its publisher is live; otherwise only those asked for through the API. The API can
also stop a stream's recording. Files live in `<RECORD_DIR>/<stream>/`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from broadcast.config import Settings
from broadcast.errors import Conflict, NotFound
from broadcast.media.recorder import Recording
from broadcast.media.segments import EXTENSIONS
from broadcast.sfu.stream import Stream

__all__ = ["FILE_NAME", "Recordings"]

logger = logging.getLogger(__name__)

# What the recorder names its files (and all a download may ask for: no paths).
FILE_NAME = re.compile(
    r"[A-Za-z0-9_-]{1,64}_\d{8}-\d{6}(_\d{1,4})?\.(" + "|".join(EXTENSIONS) + ")"
)


class Recordings:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = None if settings.record_dir is None else Path(settings.record_dir)
        self.active: dict[str, Recording] = {}
        # Asked for through the API: recorded while live (with RECORD_ALL, streams asked
        # not to be recorded are in `declined`).
        self.requested: set[str] = set()
        self.declined: set[str] = set()
        self._closing: set[Recording] = set()
        self._ended = {"bytes": 0, "frames_dropped": 0}  # of recordings that finished

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def wanted(self, name: str) -> bool:
        if self.settings.record_all:
            return name not in self.declined
        return name in self.requested

    def published(self, stream: Stream) -> None:
        """A publisher's media is negotiated: record the stream if it is wanted."""
        if self.directory is not None and self.wanted(stream.name):
            self._start(stream)

    def unpublished(self, stream: Stream) -> None:
        """The stream's publisher left: finish its file."""
        self._stop(stream.name)

    def _start(self, stream: Stream) -> Recording:
        current = self.active.get(stream.name)
        if current is not None and current.stream is stream and not current.stopped:
            return current
        self._stop(stream.name)
        assert self.directory is not None
        s = self.settings
        recording = Recording(
            stream,
            self.directory,
            s.record_format,
            s.record_segment_seconds,
            s.record_segment_bytes,
        )
        self.active[stream.name] = recording
        return recording

    def _stop(self, name: str) -> None:
        recording = self.active.pop(name, None)
        if recording is None:
            return
        recording.stop()
        self._closing.add(recording)
        task = asyncio.ensure_future(recording.wait_closed())
        task.add_done_callback(lambda _: self._finished(recording))

    def _finished(self, recording: Recording) -> None:
        self._closing.discard(recording)
        self._ended["bytes"] += recording.writer.bytes_written
        self._ended["frames_dropped"] += recording.frames_dropped

    def _all(self) -> list[Recording]:
        return [*self.active.values(), *self._closing]

    def bytes_written(self) -> int:
        """Coded media bytes written to files so far (for /metrics)."""
        return self._ended["bytes"] + sum(r.writer.bytes_written for r in self._all())

    def frames_dropped(self) -> int:
        return self._ended["frames_dropped"] + sum(r.frames_dropped for r in self._all())

    def request(self, name: str, stream: Stream | None) -> dict[str, object]:
        """The API asks for the stream to be recorded (now, if live; else once it is);
        only while recording is enabled."""
        self.requested.add(name)
        self.declined.discard(name)
        if self.directory is not None and stream is not None and stream.live:
            self._start(stream)
        return self.state(name)

    def decline(self, name: str) -> dict[str, object]:
        """The API asks for the stream's recording to stop (and not to restart)."""
        self.requested.discard(name)
        if self.settings.record_all:
            self.declined.add(name)
        self._stop(name)
        return self.state(name)

    def state(self, name: str) -> dict[str, object]:
        recording = self.active.get(name)
        return {
            "enabled": self.enabled,
            "wanted": self.enabled and self.wanted(name),
            "recording": recording is not None,
            **({} if recording is None else recording.state()),
        }

    def files(self, name: str) -> list[dict[str, object]]:
        """The stream's recorded files, oldest first."""
        if self.directory is None:
            return []
        folder = self.directory / name
        if not folder.is_dir():
            return []
        # The file being written, or whose end is still being written.
        writing = {r.files[-1] for r in self._all() if r.files}
        out: list[dict[str, object]] = []
        for path in sorted(folder.iterdir()):
            if not FILE_NAME.fullmatch(path.name) or not path.is_file():
                continue
            info = path.stat()
            out.append(
                {
                    "name": path.name,
                    "bytes": info.st_size,
                    "modified_at": info.st_mtime,
                    "in_progress": path in writing,
                    "url": f"/api/streams/{name}/recordings/{path.name}",
                }
            )
        return out

    def path(self, name: str, file: str) -> Path:
        """A recorded file of the stream, by name (404 when not there)."""
        if self.directory is None or not FILE_NAME.fullmatch(file):
            raise NotFound(f"no recording {file!r} of stream {name!r}")
        path = self.directory / name / file
        if not path.is_file():
            raise NotFound(f"no recording {file!r} of stream {name!r}")
        return path

    def delete(self, name: str, file: str) -> None:
        path = self.path(name, file)
        recording = self.active.get(name)
        if recording is not None and recording.current_file == path:
            raise Conflict(f"{file!r} is being recorded; stop the recording first")
        path.unlink(missing_ok=True)

    async def close(self) -> None:
        """Finish every file (server shutdown)."""
        for name in list(self.active):
            self._stop(name)
        pending = list(self._closing)
        await asyncio.gather(*(r.wait_closed() for r in pending), return_exceptions=True)
