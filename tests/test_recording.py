"""Recording without transcoding: real aiortc publishers, real files opened by PyAV."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from tests.conftest import RunningServer, ServerFactory
from tests.support.nodes import nodes
from tests.support.peers import Publisher

__all__ = ["nodes"]

FPS = 30


class Gate:
    """Ends both of a publisher's tracks after `frames` video frames: each track's next
    recv() then waits for good, so the last frames sent are known exactly."""

    def __init__(self, publisher: Publisher, frames: int) -> None:
        self.closed = asyncio.Event()
        self.sent = {"video": 0, "audio": 0}
        for kind, track in (("video", publisher.video), ("audio", publisher.audio)):
            self._wrap(kind, track, frames if kind == "video" else None)
        for sender in publisher.pc.getSenders():
            self._count(sender)

    def _wrap(self, kind: str, track: Any, limit: int | None) -> None:
        original = track.recv

        async def recv() -> Any:
            if self.closed.is_set():
                await asyncio.Event().wait()  # this track sends nothing more
            frame = await original()
            if limit is not None and track.count >= limit:
                self.closed.set()
            return frame

        track.recv = recv

    def _count(self, sender: Any) -> None:
        """Frames the encoder actually produced and sent, per kind."""
        original = sender._next_encoded_frame
        kind = sender.track.kind

        async def next_frame(codec: Any) -> Any:
            encoded = await original(codec)
            if encoded is not None:
                self.sent[kind] += 1
            return encoded

        sender._next_encoded_frame = next_frame


def probe(path: Path) -> dict[str, Any]:
    """Decode the whole file: frames, and each stream's span (first pts to last end)."""
    out: dict[str, Any] = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            spans: list[float] = []
            frames = 0
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue  # the demuxer's end-of-stream marker
                start = float(packet.pts * packet.time_base)
                spans += [start, start + float(packet.duration * packet.time_base)]
                frames += len(packet.decode())
            container.seek(0)
            out[stream.type] = {
                "codec": stream.codec_context.name,
                "frames": frames,
                "start": min(spans),
                "end": max(spans),
            }
    return out


async def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def files(client: httpx.AsyncClient, base: str, stream: str) -> list[dict[str, Any]]:
    response = await client.get(f"{base}/api/streams/{stream}/recordings")
    assert response.status_code == 200
    listed: list[dict[str, Any]] = response.json()
    return listed


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_ten_seconds_recorded_in_sync_frame_for_frame(
    make_server: ServerFactory, tmp_path: Path, codec: str
) -> None:
    server: RunningServer = await make_server(record_dir=str(tmp_path))
    publisher = Publisher(server.base_url, "show", video_codec=codec, size=(320, 240))
    gate = Gate(publisher, frames=10 * FPS)
    client = server.client
    assert (await publisher.start(client)).status == 201
    await asyncio.wait_for(gate.closed.wait(), 20)
    recordings = server.hub.recordings
    await wait_for(
        lambda: recordings.state("show").get("frames", {}).get("video", 0) >= gate.sent["video"],
        5,
        "the last frame in the recording",
    )
    state = (await client.get("/api/streams/show/recording")).json()
    print("STATE", state)
    assert state["recording"] is True and state["segments"] == 1, state
    await publisher.stop(client)
    listed: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = await files(client, server.base_url, "show")
        if listed and not listed[0]["in_progress"]:
            break
        await asyncio.sleep(0.05)
    assert listed and len(listed) == 1 and not listed[0]["in_progress"]
    name = listed[0]["name"]
    assert name.endswith(".webm" if codec == "video/VP8" else ".mkv")
    media = probe(tmp_path / "show" / name)
    video, audio = media["video"], media["audio"]
    assert video["codec"] == ("vp8" if codec == "video/VP8" else "h264")
    assert audio["codec"] == "opus"
    # Every frame the publisher's encoder sent is in the file, and decodes.
    assert video["frames"] == gate.sent["video"] == 10 * FPS
    assert video["start"] == 0.0
    assert abs(video["end"] - 10.0) < 0.1, video
    assert abs((audio["end"] - audio["start"]) - (video["end"] - video["start"])) < 0.1, media
    assert abs(audio["start"] - video["start"]) < 0.1, media
    # The download is the same file.
    response = await client.get(f"/api/streams/show/recordings/{name}")
    assert response.status_code == 200
    assert response.content == (tmp_path / "show" / name).read_bytes()
