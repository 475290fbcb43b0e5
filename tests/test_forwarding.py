"""Acceptance: publisher -> server -> viewers with real aiortc peers that decode."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.support.peers import Publisher, Viewer


def decoder_threads() -> int:
    return sum(t.name.endswith("-decoder") for t in threading.enumerate())


@pytest.mark.parametrize("codec", ["video/H264", "video/VP8"])
async def test_three_viewers_decode_without_server_decoding(server, codec: str) -> None:
    publisher = Publisher(server.base_url, "live", video_codec=codec)
    result = await publisher.start(server.client)
    assert result.status == 201, result.answer
    await asyncio.wait_for(publisher.connected.wait(), 10)
    viewers = [Viewer(server.base_url, "live") for _ in range(3)]
    for viewer in viewers:
        assert (await viewer.start(server.client)).status == 201
    await asyncio.gather(*(v.wait_frames(video=60, audio=50, timeout=30) for v in viewers))

    for viewer in viewers:
        assert viewer.video.frames >= 60
        assert viewer.video.sizes == {(640, 360)}
        assert viewer.audio.frames >= 50
    hub = server.hub
    stream = hub.streams["live"]
    assert stream.feeds["video"].active_codec == codec.lower()
    # The server never started a decoder: its publisher receivers are tapped before
    # the jitter buffer, and viewer senders never encode.
    assert stream.publisher.decoders_started() == 0
    sent = [v.downtracks["video"].packets for v in hub.viewers_of(stream)]
    assert len(sent) == 3 and min(sent) > 60
    metrics = (await server.client.get("/metrics")).text
    assert "process_cpu_seconds_total" in metrics
    delays = [
        x for x in metrics.splitlines() if x.startswith("broadcast_forward_delay_seconds_count")
    ]
    assert delays and float(delays[0].split()[-1]) > 100
    detail = (await server.client.get("/api/streams/live")).json()
    assert detail["viewers"] == 3 and len(detail["viewer_sessions"]) == 3
    assert {t["kind"] for t in detail["tracks"]} == {"audio", "video"}
    (video_track,) = [t for t in detail["tracks"] if t["kind"] == "video"]
    assert video_track["codec"] == codec.lower()
    assert video_track["layers"][0]["width"] == 640 and video_track["layers"][0]["height"] == 360
    for session in detail["viewer_sessions"]:
        video = session["tracks"]["video"]
        assert video["packets"] > 60 and video["bitrate_bps"] > 10_000
        assert video["packets_lost"] <= 5 and 0 <= video["fraction_lost"] < 0.05
    for viewer in viewers:
        await viewer.stop(server.client)
    await publisher.stop(server.client)


async def test_late_viewer_gets_keyframe_on_join(server) -> None:
    # aiortc's VP8 encoder makes a keyframe every 3000 frames (100 s): without a PLI
    # on join the late viewer would wait far longer than 10 s.
    publisher = Publisher(server.base_url, "gop", video_codec="video/VP8")
    assert (await publisher.start(server.client)).status == 201
    first = Viewer(server.base_url, "gop")
    await first.start(server.client)
    await first.wait_frames(video=30, timeout=20)
    feed = server.hub.streams["gop"].feeds["video"]
    await asyncio.sleep(1.5)  # let the stream run well past its first keyframe
    keyframes_before = feed.keyframes

    late = Viewer(server.base_url, "gop")
    assert (await late.start(server.client)).status == 201
    await late.wait_frames(video=10, timeout=10)
    delay = late.first_frame_delay()
    assert delay is not None and delay < 1.0, delay
    print(f"late viewer: first frame {delay:.3f} s after POST")
    assert feed.keyframe_requests >= 1
    assert feed.keyframes > keyframes_before
    for peer in (late, first, publisher):
        await peer.stop(server.client)


@pytest.mark.parametrize("codec", ["video/H264", "video/VP8"])
async def test_viewer_waiting_before_publisher_then_restart(server, codec: str) -> None:
    viewer = Viewer(server.base_url, "early")
    assert (await viewer.start(server.client)).status == 201
    first = Publisher(server.base_url, "early", video_codec=codec)
    assert (await first.start(server.client)).status == 201
    await viewer.wait_frames(video=30, audio=20, timeout=20)

    await first.stop(server.client)
    frames_before = viewer.video.frames
    second = Publisher(server.base_url, "early", video_codec=codec)
    assert (await second.start(server.client)).status == 201
    await viewer.wait_frames(video=frames_before + 30, timeout=20)
    downtrack = server.hub.viewers_of(server.hub.streams["early"])[0].downtracks["video"]
    assert downtrack.synced
    assert viewer.pc.connectionState == "connected"
    await viewer.stop(server.client)
    await second.stop(server.client)


async def test_late_viewer_of_a_publisher_ignoring_pli_starts_from_the_cache(server) -> None:
    # Like OBS: PLI is ignored and keyframes come every 4 s. The server replays its cached
    # keyframe and what followed, pulled together in time, so the viewer starts at once.
    publisher = Publisher(server.base_url, "obs", obs_like_gop=4.0)
    assert (await publisher.start(server.client)).status == 201
    first = Viewer(server.base_url, "obs")
    await first.start(server.client)
    await first.wait_frames(video=45, timeout=20)  # 1.5 s into the 4 s GOP
    feed = server.hub.streams["obs"].feeds["video"]
    replays = feed.replays

    late = Viewer(server.base_url, "obs")
    assert (await late.start(server.client)).status == 201
    await late.wait_frames(video=30, timeout=10)
    delay = late.first_frame_delay()
    assert delay is not None and delay < 1.0, delay
    print(f"late viewer, publisher ignoring PLI: first frame {delay:.3f} s after POST")
    assert feed.replays == replays + 1  # started from the cache, not a new keyframe
    for peer in (late, first, publisher):
        await peer.stop(server.client)
