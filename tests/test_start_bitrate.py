"""The start-bitrate hint in WHIP answers (x-google-start-bitrate), with literal answers."""

from __future__ import annotations

from broadcast.protocol.start_bitrate import add_start_bitrate

ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:102 H264/90000",
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=rtpmap:103 rtx/90000",
        "a=fmtp:103 apt=102",
        "",
    ]
)


def test_each_video_codec_gets_the_hint_once() -> None:
    out = add_start_bitrate(ANSWER, 1_500_000)
    lines = out.split("\r\n")
    assert "a=fmtp:96 x-google-start-bitrate=1500" in lines
    assert (
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f;"
        "x-google-start-bitrate=1500"
    ) in lines
    assert "a=fmtp:97 apt=96" in lines and "a=fmtp:103 apt=102" in lines  # RTX untouched
    assert "a=fmtp:111 minptime=10;useinbandfec=1" in lines  # audio untouched
    assert out.count("x-google-start-bitrate") == 2
    assert out.endswith("\r\n")
    assert add_start_bitrate(out, 1_500_000) == out  # idempotent


def test_zero_means_no_hint() -> None:
    assert add_start_bitrate(ANSWER, 0) == ANSWER
