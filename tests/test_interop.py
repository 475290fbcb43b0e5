"""Interop with what real clients send: OBS-style offers (H.264 High, no trickle, Bearer)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from tests.support.peers import Publisher, Viewer


async def test_obs_style_high_profile_offer_with_bearer(make_server) -> None:
    server = await make_server(publish_token="obs-key")
    publisher = Publisher(server.base_url, "obs", video_codec=None)
    result = await publisher.start(server.client, token="obs-key", munge=obs_style)
    assert result.status == 201, result.answer
    assert result.location is not None and result.location.startswith("/whip/obs/")
    video = result.answer.split("m=video")[1]
    assert "profile-level-id=64001f" in video
    assert "a=candidate:" in result.answer  # non-trickle clients need them in the answer
    await asyncio.wait_for(publisher.connected.wait(), 10)

    viewer = Viewer(server.base_url, "obs")
    assert (await viewer.start(server.client)).status == 201
    await viewer.wait_frames(video=45, timeout=20)
    assert viewer.video.sizes == {(640, 360)}
    stream = server.hub.streams["obs"]
    assert stream.feeds["video"].active_codec == "video/h264"
    await viewer.stop(server.client)
    await publisher.stop(server.client)


def only_video_codec(name: str) -> Callable[[str], str]:
    """Keep one video codec (and its RTX) in the offer's video m-line."""

    def munge(offer: str) -> str:
        lines = offer.split("\r\n")
        pts = [m.group(1) for x in lines if (m := re.match(rf"a=rtpmap:(\d+) {name}/", x))]
        keep = {pts[0]} | {
            m.group(1)
            for x in lines
            if (m := re.match(r"a=fmtp:(\d+) apt=(\d+)", x)) and m.group(2) == pts[0]
        }
        out, in_video = [], False
        for line in lines:
            if line.startswith("m="):
                in_video = line.startswith("m=video")
                if in_video:
                    parts = line.split(" ")
                    line = " ".join(parts[:3] + [p for p in parts[3:] if p in keep])
            pt = re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+)", line)
            if not (in_video and pt and pt.group(1) not in keep):
                out.append(line)
        return "\r\n".join(out)

    return munge


def obs_style(offer: str) -> str:
    """One H.264 codec in the video m-line, called High profile, as OBS offers it."""
    only_h264 = only_video_codec("H264")(offer)
    return re.sub(r"profile-level-id=[0-9a-fA-F]{6}", "profile-level-id=64001f", only_h264)


@pytest.mark.parametrize("codec", ["VP9", "AV1"])
async def test_vp9_and_av1_are_negotiated_for_forwarding(server, codec: str) -> None:
    publisher = Publisher(server.base_url, codec.lower(), video_codec=None)
    result = await publisher.start(server.client, munge=only_video_codec(codec))
    assert result.status == 201, result.answer
    assert f" {codec}/90000" in result.answer.split("m=video")[1]
    feed = server.hub.streams[codec.lower()].feeds["video"]
    assert [c.mime for c in feed.codecs if not c.is_rtx] == [f"video/{codec.lower()}"]
    viewer = Viewer(server.base_url, codec.lower())
    answer = (await viewer.start(server.client)).answer
    assert f" {codec}/90000" in answer.split("m=video")[1]
    await viewer.stop(server.client)
    await publisher.stop(server.client)
