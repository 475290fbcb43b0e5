"""Interop with what real clients send: OBS-style offers (H.264 High, no trickle, Bearer)."""

from __future__ import annotations

import asyncio
import re

from tests.support.peers import Publisher, Viewer


def obs_style(offer: str) -> str:
    """Keep only one H.264 codec in the video m-line and call it High, as OBS offers."""
    lines = offer.split("\r\n")
    h264 = [m.group(1) for line in lines if (m := re.match(r"a=rtpmap:(\d+) H264/", line))]
    keep = {h264[0]}
    keep |= {
        m.group(1)
        for line in lines
        if (m := re.match(r"a=fmtp:(\d+) apt=(\d+)", line)) and m.group(2) == h264[0]
    }
    out = []
    in_video = False
    for line in lines:
        if line.startswith("m="):
            in_video = line.startswith("m=video")
            if in_video:
                parts = line.split(" ")
                line = " ".join(parts[:3] + [pt for pt in parts[3:] if pt in keep])
        pt = re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+)", line)
        if in_video and pt and pt.group(1) not in keep:
            continue
        out.append(re.sub(r"profile-level-id=[0-9a-fA-F]{6}", "profile-level-id=64001f", line))
    return "\r\n".join(out)


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
