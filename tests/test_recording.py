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
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer, ServerFactory
from tests.support.nodes import Node, nodes
from tests.support.peers import Publisher
from tests.support.redisproc import RedisProcess, redis_server
from tests.test_e2ee import go_live
from tests.test_openapi import check_answer
from tests.test_player import FAKE_MEDIA, launch

__all__ = ["launch", "nodes", "redis_server"]

FPS = 30
CODECS = ("video/VP8", "video/H264")


class Gate:
    """Ends both of a publisher's tracks after `frames` video frames: each track's next
    recv() then waits for good, so the last frames sent are known exactly."""

    def __init__(self, publisher: Publisher, frames: int) -> None:
        self.closed = asyncio.Event()
        self.frames = frames
        self.all_sent = asyncio.Event()  # the last video frame is encoded and sent
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
                if self.sent["video"] == self.frames:
                    self.all_sent.set()
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
                if packet.pts is not None:  # None: the end, which flushes the decoder
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


async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """/metrics, parsed by prometheus-client: unlabelled samples by name."""
    text = (await client.get("/metrics")).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def files(client: httpx.AsyncClient, base: str, stream: str) -> list[dict[str, Any]]:
    response = await client.get(f"{base}/api/streams/{stream}/recordings")
    assert response.status_code == 200
    listed: list[dict[str, Any]] = response.json()
    return listed


async def record_ten_seconds(server: RunningServer, tmp_path: Path, codec: str) -> None:
    """Publish exactly 300 frames as `codec`, stop, and check the finished file."""
    stream = codec.split("/")[1].lower()
    publisher = Publisher(server.base_url, stream, video_codec=codec, size=(320, 240))
    gate = Gate(publisher, frames=10 * FPS)
    client = server.client
    assert (await publisher.start(client)).status == 201
    await asyncio.wait_for(gate.all_sent.wait(), 20)
    recordings = server.hub.recordings
    await wait_for(
        lambda: recordings.state(stream).get("frames", {}).get("video", 0) >= gate.sent["video"],
        5,
        "the last frame in the recording",
    )
    state = (await client.get(f"/api/streams/{stream}/recording")).json()
    assert state["recording"] is True and state["segments"] == 1, state
    await publisher.stop(client)
    listed: list[dict[str, Any]] = []
    for _ in range(200):  # the writer thread finishes the file (bounded: 10 s)
        listed = await files(client, server.base_url, stream)
        if listed and not listed[0]["in_progress"]:
            break
        await asyncio.sleep(0.05)
    assert listed and len(listed) == 1 and not listed[0]["in_progress"]
    name = listed[0]["name"]
    assert name.endswith(".webm" if stream == "vp8" else ".mkv")
    media = probe(tmp_path / stream / name)
    video, audio = media["video"], media["audio"]
    assert (video["codec"], audio["codec"]) == (stream, "opus")
    # Every frame the publisher's encoder sent is in the file, and decodes.
    assert video["frames"] == gate.sent["video"] == 10 * FPS
    assert video["start"] == 0.0
    assert abs(video["end"] - 10.0) < 0.1, video
    assert abs((audio["end"] - audio["start"]) - (video["end"] - video["start"])) < 0.1, media
    assert abs(audio["start"] - video["start"]) < 0.1, media
    # The download is the same file.
    response = await client.get(f"/api/streams/{stream}/recordings/{name}")
    assert response.status_code == 200
    assert response.content == (tmp_path / stream / name).read_bytes()


async def test_ten_seconds_recorded_in_sync_frame_for_frame(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """VP8 into WebM and H.264 into Matroska, side by side on one server."""
    server: RunningServer = await make_server(record_dir=str(tmp_path))
    await asyncio.gather(*(record_ten_seconds(server, tmp_path, c) for c in CODECS))


async def test_the_api_starts_stops_lists_serves_and_deletes(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    off = await make_server()
    refused = await off.client.post("/api/streams/show/recording")
    assert refused.status_code == 409 and "BROADCAST_RECORD_DIR" in refused.text

    server: RunningServer = await make_server(
        record_dir=str(tmp_path), record_all=False, publish_token="publish-secret"
    )
    client = server.client
    owner = {"Authorization": "Bearer publish-secret"}
    control = "/api/streams/show/recording"
    state = await client.get(control)
    check_answer("/api/streams/{stream}/recording", "GET", state)
    assert state.json() == {"enabled": True, "wanted": False, "recording": False}
    for response, status in [
        (await client.post(control), 401),
        (await client.post(control, headers={"Authorization": "Bearer wrong"}), 401),
        (await client.post(control, headers=owner), 409),  # not live
        (await client.post("/api/streams/bad%20name/recording", headers=owner), 400),
    ]:
        assert response.status_code == status, response.text
        check_answer("/api/streams/{stream}/recording", "POST", response)

    publisher = Publisher(server.base_url, "show", size=(320, 240))
    assert (await publisher.start(client, token="publish-secret")).status == 201
    await asyncio.wait_for(publisher.connected.wait(), 10)
    assert server.hub.recordings.active == {}  # RECORD_ALL is off: not until asked
    started = await client.post(control, headers=owner)
    check_answer("/api/streams/{stream}/recording", "POST", started)
    assert started.json()["recording"] is True
    recordings = server.hub.recordings
    await wait_for(
        lambda: recordings.state("show").get("frames", {}).get("video", 0) >= 30, 10, "frames"
    )
    described = (await client.get("/api/streams/show")).json()
    assert described["recording"]["recording"] is True
    metrics = await scrape(client)
    assert metrics["broadcast_recordings"] == 1 and metrics["broadcast_recording_bytes_total"] > 0
    stopped = await client.delete(control, headers=owner)
    check_answer("/api/streams/{stream}/recording", "DELETE", stopped)
    assert stopped.json()["recording"] is False and stopped.json()["wanted"] is False

    listing: list[dict[str, Any]] = []
    for _ in range(200):  # the writer thread finishes the file (bounded: 10 s)
        response = await client.get("/api/streams/show/recordings")
        listing = response.json()
        if listing and not listing[0]["in_progress"]:
            break
        await asyncio.sleep(0.05)
    check_answer("/api/streams/{stream}/recordings", "GET", response)
    assert len(listing) == 1 and not listing[0]["in_progress"]
    url = listing[0]["url"]
    whole = (tmp_path / "show" / listing[0]["name"]).read_bytes()
    assert listing[0]["bytes"] == len(whole) > 0
    assert probe(tmp_path / "show" / listing[0]["name"])["video"]["frames"] >= 30

    file_path = "/api/streams/{stream}/recordings/{file}"
    part = await client.get(url, headers={"Range": "bytes=0-99"})
    check_answer(file_path, "GET", part)
    assert part.status_code == 206 and part.content == whole[:100]
    assert part.headers["content-type"] == "video/webm"
    for bad in ("..%2F..%2Fetc%2Fpasswd", "show_20260101-000000.webm", "notes.txt"):
        missing = await client.get(f"/api/streams/show/recordings/{bad}")
        assert missing.status_code == 404, bad
        check_answer(file_path, "GET", missing)
    assert (await client.delete(url)).status_code == 401
    deleted = await client.delete(url, headers=owner)
    check_answer(file_path, "DELETE", deleted)
    assert deleted.status_code == 204
    assert (await client.get("/api/streams/show/recordings")).json() == []
    await publisher.stop(client)


@pytest.mark.parametrize(("codec", "record_format"), [("video/VP8", "auto"), ("video/H264", "mp4")])
async def test_segments_rotate_and_a_crash_keeps_them_playable(
    nodes: Callable[..., Node], tmp_path: Path, codec: str, record_format: str
) -> None:
    """A node is SIGKILLed while recording 2-second segments: every file on disk opens and
    decodes, the finished ones whole, the one being written up to its last flush."""
    node = nodes(
        "rec",
        None,
        record_dir=str(tmp_path),
        record_format=record_format,
        record_segment_seconds="2",
        rate_limit="0",
    )
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = Publisher(node.url, "crash", video_codec=codec, size=(320, 240))
        assert (await publisher.start(client)).status == 201
        folder = tmp_path / "crash"

        def third_has_media() -> bool:  # past its header: its first cluster or fragment
            files = sorted(folder.glob("*"))
            return len(files) >= 3 and files[2].stat().st_size > 4000

        await wait_for(third_has_media, 20, "a third segment with media in it")
        node.kill()
        await publisher.pc.close()
    paths = sorted(folder.iterdir())
    suffix = ".webm" if record_format == "auto" else ".mp4"
    assert paths and all(p.suffix == suffix for p in paths), paths
    media = [probe(p) for p in paths]
    for finished in media[:-1]:  # 2 s each, give or take the keyframe it waited for
        assert 1.9 <= finished["video"]["end"] <= 2.6, media
        assert finished["video"]["frames"] >= 55
        assert abs(finished["audio"]["end"] - finished["video"]["end"]) < 0.1, media
    assert media[-1]["video"]["frames"] >= 1  # the crashed one still plays


async def test_a_publisher_that_vanishes_leaves_a_finished_file(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server: RunningServer = await make_server(record_dir=str(tmp_path))
    publisher = Publisher(server.base_url, "gone", size=(320, 240))
    gate = Gate(publisher, frames=3 * FPS)
    assert (await publisher.start(server.client)).status == 201
    await asyncio.wait_for(gate.all_sent.wait(), 20)
    recordings = server.hub.recordings
    await wait_for(
        lambda: recordings.state("gone").get("frames", {}).get("video", 0) >= gate.sent["video"],
        5,
        "the last frame in the recording",
    )
    await publisher.pc.close()  # no DELETE: the server sees the connection go
    listing = await wait_for(
        lambda: [f for f in recordings.files("gone") if not f["in_progress"]], 20, "the end"
    )
    media = probe(tmp_path / "gone" / listing[0]["name"])
    assert media["video"]["frames"] == gate.sent["video"] == 3 * FPS
    assert abs(media["video"]["end"] - 3.0) < 0.1


async def test_the_owner_answers_for_its_recording(
    redis_server: RedisProcess, nodes: Callable[..., Node], tmp_path: Path
) -> None:
    """Two workers: whichever takes the request, the stream's worker answers; another
    node sends the client there (307)."""
    origin = nodes("a", redis_server.url, workers=2, record_dir=str(tmp_path), rate_limit="0")
    other = nodes("b", redis_server.url)
    async with httpx.AsyncClient(timeout=10) as client:
        publisher = Publisher(origin.url, "cam", size=(160, 120))
        assert (await publisher.start(client)).status == 201
        await asyncio.wait_for(publisher.connected.wait(), 10)
        path = "/api/streams/cam/recording"
        for _ in range(8):  # a new connection each: the kernel spreads them over workers
            async with httpx.AsyncClient(timeout=10) as fresh:
                state = (await fresh.get(origin.url + path)).json()
            assert state["recording"] is True, state
        for _ in range(50):  # the registry lists the stream within a heartbeat (5 s)
            moved = await client.post(other.url + path)
            if moved.status_code == 307:
                break
            await asyncio.sleep(0.1)
        assert moved.status_code == 307
        # The registry's URL of the stream's worker (its own port, BROADCAST_PORT + 1 + i).
        assert moved.headers["location"] in {origin.private_url(i) + path for i in (0, 1)}
        await publisher.stop(client)


async def test_segments_rotate_by_size(make_server: ServerFactory, tmp_path: Path) -> None:
    limit = 40_000
    server: RunningServer = await make_server(record_dir=str(tmp_path), record_segment_bytes=limit)
    publisher = Publisher(server.base_url, "big", size=(640, 360))
    assert (await publisher.start(server.client)).status == 201
    recordings = server.hub.recordings
    await wait_for(lambda: recordings.state("big").get("segments", 0) >= 3, 30, "three segments")
    await publisher.stop(server.client)
    await wait_for(
        lambda: not any(f["in_progress"] for f in recordings.files("big")), 10, "the last file"
    )
    paths = sorted((tmp_path / "big").iterdir())
    for path in paths[:-1]:  # past the limit, then cut at the next keyframe
        assert limit <= path.stat().st_size < 3 * limit, path.stat().st_size
        media = probe(path)
        assert media["video"]["frames"] > 0 and media["video"]["start"] == 0.0


@pytest.mark.parametrize(
    ("codec", "simulcast"), [("VP8", True), ("H264", False)], ids=["vp8-simulcast", "h264"]
)
async def test_a_chromium_publisher_is_recorded_whole(
    make_server: ServerFactory, launch: Any, tmp_path: Path, codec: str, simulcast: bool
) -> None:
    """The browser publish page (libwebrtc: VP8 simulcast with PictureID, padding and RTX;
    H.264 with STAP-A parameter sets): no frame lost on the way into the file, every one
    decodes, audio and video aligned."""
    server: RunningServer = await make_server(record_dir=str(tmp_path))
    browser = await launch(FAKE_MEDIA)
    context = await browser.new_context()
    url = f"{server.base_url}/publish/web"
    page, _ = await go_live(context, url, codec=codec, simulcast=simulcast)
    recordings = server.hub.recordings
    # 4 s of Chromium's fake camera (20 frames a second).
    await wait_for(lambda: recordings.state("web").get("frames", {}).get("video", 0) >= 80, 20, "")
    before = recordings.state("web")
    await page.click("#stop")
    listing = await wait_for(
        lambda: [f for f in recordings.files("web") if not f["in_progress"]], 20, "the end"
    )
    # One file: a simulcast recording starts on the large layer, not the small one the
    # browser starts with.
    assert len(listing) == 1, listing
    media = probe(tmp_path / "web" / listing[0]["name"])
    assert before["frames_dropped"] == 0 and before["errors"] == 0, before
    assert media["video"]["codec"] == codec.lower()
    assert media["video"]["frames"] >= before["frames"]["video"] >= 80
    assert abs(media["audio"]["end"] - media["video"]["end"]) < 0.1, media
    assert abs(media["audio"]["start"] - media["video"]["start"]) < 0.1, media
