"""Interop with what real clients send: OBS-style offers (H.264 High, no trickle, Bearer)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

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


def rtpmaps(section: str) -> dict[int, str]:
    """Payload type -> 'codec/clock[;fmtp]' for one media section; duplicates fail."""
    found: dict[int, str] = {}
    fmtp = dict(re.findall(r"a=fmtp:(\d+) (\S+)", section))
    for pt, codec in re.findall(r"a=rtpmap:(\d+) (\S+)", section):
        assert int(pt) not in found, f"payload type {pt} mapped twice"
        found[int(pt)] = codec + (";" + fmtp[pt] if pt in fmtp else "")
    return found


async def test_chromium_offer_with_low_dynamic_payload_types(server) -> None:
    # Chromium 156 (Debian), a recvonly offer as its player makes it: besides 96-127 it
    # numbers VP9, H.264 and AV1 variants 35-49. Every answered payload type must be the
    # offer's own number for that codec (RFC 3264 §6.1), each mapped once.
    offer = (Path(__file__).parent / "fixtures" / "chromium-156-whep-offer.sdp").read_text()
    response = await server.client.post(
        "/whep/chromium", content=offer, headers={"Content-Type": "application/sdp"}
    )
    assert response.status_code == 201, response.text
    offered, answered = (
        [rtpmaps(part) for part in sdp.split("m=")[1:]] for sdp in (offer, response.text)
    )
    for offer_section, answer_section in zip(offered, answered, strict=True):
        assert answer_section, "a media section with no codec"
        for pt, codec in answer_section.items():
            name = codec.split(";")[0].lower()
            assert offer_section[pt].split(";")[0].lower() == name, (pt, codec)
            if name.startswith("rtx/"):
                apt = int(codec.split("apt=")[1].split(";")[0])
                assert apt in answer_section, f"rtx {pt} points at {apt}, not answered"
    video = answered[0]
    assert any(pt < 64 for pt in video), "the 35-63 entries were dropped, not echoed"
    assert (await server.client.delete(response.headers["location"])).status_code == 200
