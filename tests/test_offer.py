"""First-line SDP offer validation (RFC 8866, RFC 9725 §4.2) against real clients' offers."""

from __future__ import annotations

import re

import pytest
from aiortc import sdp as aiortc_sdp
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcast.errors import MalformedSdp, UnprocessableContent
from broadcast.protocol import offer as offer_module
from broadcast.protocol.offer import OfferSummary, h264_profile, inspect_offer

FP = (
    "sha-256 9F:1B:63:27:0E:A4:B5:3C:D8:71:0A:E2:5F:94:CB:36:"
    "02:8D:7E:41:AF:19:C6:58:E3:2B:90:D7:64:3A:F1:0C"
)


def sdp(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


# Chrome 131 player: addTransceiver("audio"/"video", {direction: "recvonly"}), gathering done.
CHROME_WHEP = sdp(
    "v=0",
    "o=- 3522437497416370316 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS",
    "m=audio 61847 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 203.0.113.7",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:2796427011 1 udp 2113937151 6c1a2f5e-0b1f-4a4c-9d1e-2f2d5b0c6f11.local 61847"
    " typ host generation 0 network-cost 999",
    "a=candidate:1936595596 1 udp 1677729535 203.0.113.7 61847 typ srflx raddr 0.0.0.0 rport 0"
    " generation 0 network-cost 999",
    "a=ice-ufrag:Zf4u",
    "a=ice-pwd:gr8lvLeXxRz7Uv5oE2bW8m1S",
    "a=ice-options:trickle",
    f"a=fingerprint:{FP}",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=recvonly",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 106 107 127 125 45 46 98 99 112 113 116 117 118",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Zf4u",
    "a=ice-pwd:gr8lvLeXxRz7Uv5oE2bW8m1S",
    "a=ice-options:trickle",
    f"a=fingerprint:{FP}",
    "a=setup:actpass",
    "a=mid:1",
    "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:13 urn:3gpp:video-orientation",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:5 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "a=recvonly",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 transport-cc",
    "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rtpmap:102 H264/90000",
    "a=rtcp-fb:102 nack",
    "a=rtcp-fb:102 nack pli",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=rtpmap:103 rtx/90000",
    "a=fmtp:103 apt=102",
    "a=rtpmap:106 H264/90000",
    "a=rtcp-fb:106 nack pli",
    "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:107 rtx/90000",
    "a=fmtp:107 apt=106",
    "a=rtpmap:127 H264/90000",
    "a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
    "a=rtpmap:125 rtx/90000",
    "a=fmtp:125 apt=127",
    "a=rtpmap:45 AV1/90000",
    "a=fmtp:45 level-idx=5;profile=0;tier=0",
    "a=rtpmap:46 rtx/90000",
    "a=fmtp:46 apt=45",
    "a=rtpmap:98 VP9/90000",
    "a=fmtp:98 profile-id=0",
    "a=rtpmap:99 rtx/90000",
    "a=fmtp:99 apt=98",
    "a=rtpmap:112 H264/90000",
    "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
    "a=rtpmap:113 rtx/90000",
    "a=fmtp:113 apt=112",
    "a=rtpmap:116 red/90000",
    "a=rtpmap:117 rtx/90000",
    "a=fmtp:117 apt=116",
    "a=rtpmap:118 ulpfec/90000",
)

# Chrome publisher with three VP8 simulcast layers (sendEncodings with rid q/h/f).
CHROME_SIMULCAST_WHIP = sdp(
    "v=0",
    "o=- 7052937493394485133 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 4c8b4b57-5f2a-4b8e-9a51-7f1f0f3e2d10",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Ml4Q",
    "a=ice-pwd:4yBgbNGDHmjDfDy6Y0Fxdc5a",
    "a=ice-options:trickle",
    f"a=fingerprint:{FP}",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendonly",
    "a=msid:4c8b4b57-5f2a-4b8e-9a51-7f1f0f3e2d10 0d5f7c9e-3b1a-4e62-8f0d-2a6c9b1e7f33",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=ssrc:2233445566 cname:Yh3N0Q1pVtVjgCkW",
    "a=ssrc:2233445566 msid:4c8b4b57-5f2a-4b8e-9a51-7f1f0f3e2d10"
    " 0d5f7c9e-3b1a-4e62-8f0d-2a6c9b1e7f33",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Ml4Q",
    "a=ice-pwd:4yBgbNGDHmjDfDy6Y0Fxdc5a",
    "a=ice-options:trickle",
    f"a=fingerprint:{FP}",
    "a=setup:actpass",
    "a=mid:1",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "a=sendonly",
    "a=msid:4c8b4b57-5f2a-4b8e-9a51-7f1f0f3e2d10 6e2b8d41-9c57-4a08-b3f6-1d7e5a2c9b84",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 transport-cc",
    "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rid:q send",
    "a=rid:h send",
    "a=rid:f send",
    "a=simulcast:send q;h;f",
)

# FFmpeg 8 WHIP muxer (libavformat/whip.c): a=setup:passive, H.264 + RTX, host candidate.
FFMPEG_WHIP = sdp(
    "v=0",
    "o=FFmpeg 4489045141692799359 2 IN IP4 127.0.0.1",
    "s=FFmpegPublishSession",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:6f2a9b1c",
    "a=ice-pwd:3e1f0c2d9a8b7c6d5e4f3a2b1c0d9e8f",
    f"a=fingerprint:{FP}",
    "a=setup:passive",
    "a=mid:0",
    "a=sendonly",
    "a=msid:FFmpeg audio",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=candidate:1 1 udp 2130706431 192.168.1.20 50000 typ host",
    "a=end-of-candidates",
    "a=ssrc:2936143432 cname:FFmpeg",
    "a=ssrc:2936143432 msid:FFmpeg audio",
    "m=video 9 UDP/TLS/RTP/SAVPF 106 105",
    "c=IN IP4 0.0.0.0",
    "a=ice-ufrag:6f2a9b1c",
    "a=ice-pwd:3e1f0c2d9a8b7c6d5e4f3a2b1c0d9e8f",
    f"a=fingerprint:{FP}",
    "a=setup:passive",
    "a=mid:1",
    "a=sendonly",
    "a=msid:FFmpeg video",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:106 H264/90000",
    "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtcp-fb:106 nack",
    "a=rtpmap:105 rtx/90000",
    "a=fmtp:105 apt=106",
    "a=candidate:1 1 udp 2130706431 192.168.1.20 50000 typ host",
    "a=end-of-candidates",
    "a=ssrc-group:FID 1640419234 3127866211",
    "a=ssrc:1640419234 cname:FFmpeg",
    "a=ssrc:1640419234 msid:FFmpeg video",
    "a=ssrc:3127866211 cname:FFmpeg",
    "a=ssrc:3127866211 msid:FFmpeg video",
)

# OBS Studio (libdatachannel): transport attributes at session level, no candidates,
# H.264 High and Constrained High.
OBS_WHIP = sdp(
    "v=0",
    "o=rtc 2892390418 0 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=group:LS 0 1",
    "a=msid-semantic:WMS *",
    "a=setup:actpass",
    "a=ice-ufrag:Rw5+",
    "a=ice-pwd:Zk3jQ4mF8vR2sT6uW9xY1aB0",
    "a=ice-options:ice2,trickle",
    f"a=fingerprint:{FP}",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "c=IN IP4 0.0.0.0",
    "a=mid:0",
    "a=sendonly",
    "a=ssrc:3316498171 cname:obs",
    "a=ssrc:3316498171 msid:obs-stream obs-audio",
    "a=msid:obs-stream obs-audio",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
    "c=IN IP4 0.0.0.0",
    "a=mid:1",
    "a=sendonly",
    "a=ssrc:2542104380 cname:obs",
    "a=ssrc:2542104380 msid:obs-stream obs-video",
    "a=msid:obs-stream obs-video",
    "a=rtcp-mux",
    "a=rtpmap:96 H264/90000",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtcp-fb:96 goog-remb",
    "a=fmtp:96 profile-level-id=64001f;packetization-mode=1;level-asymmetry-allowed=1",
    "a=rtpmap:97 H264/90000",
    "a=rtcp-fb:97 nack pli",
    "a=fmtp:97 profile-level-id=640c1f;packetization-mode=1;level-asymmetry-allowed=1",
)

ALL = {"chrome-whep": CHROME_WHEP, "chrome-simulcast": CHROME_SIMULCAST_WHIP}
ALL |= {"ffmpeg": FFMPEG_WHIP, "obs": OBS_WHIP}
ROLE = {"chrome-whep": "whep", "chrome-simulcast": "whip", "ffmpeg": "whip", "obs": "whip"}


def test_chrome_whep_recvonly() -> None:
    summary = inspect_offer(CHROME_WHEP, role="whep")
    assert [(m.kind, m.mid, m.direction, m.port) for m in summary.media] == [
        ("audio", "0", "recvonly", 61847),
        ("video", "1", "recvonly", 9),
    ]
    assert summary.setup == "actpass" and summary.setup_explicit
    assert summary.has_candidates and summary.bundle_mids == ("0", "1")
    assert (summary.ice_ufrag, summary.ice_pwd) == ("Zf4u", "gr8lvLeXxRz7Uv5oE2bW8m1S")
    assert summary.ice_options == ("trickle",) and not summary.ice_lite
    audio, video = summary.audio, summary.video
    assert audio is not None and video is not None
    opus = audio.codecs[0]
    assert (opus.pt, opus.name, opus.clock_rate, opus.channels) == (111, "opus", 48000, 2)
    assert opus.fmtp == {"minptime": "10", "useinbandfec": "1"}
    assert opus.rtcp_fb == ("transport-cc",)
    assert audio.codecs[1].fmtp == {"111/111": ""}
    assert [c.pt for c in audio.codecs] == [111, 63, 9, 0, 8, 13, 110, 126]
    assert audio.extmaps[4] == "urn:ietf:params:rtp-hdrext:sdes:mid"
    h264 = {c.pt: h264_profile(c.fmtp) for c in video.codecs if c.name == "H264"}
    assert h264 == {102: "baseline", 106: "constrained-baseline", 127: "main", 112: "high"}
    vp8 = video.codecs[0]
    assert vp8.rtcp_fb == ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
    assert video.codecs[1].name == "rtx" and video.codecs[1].fmtp == {"apt": "96"}
    assert video.rids == () and video.simulcast is None


def test_chrome_whep_offer_is_not_a_whip_offer() -> None:
    with pytest.raises(UnprocessableContent, match="recvonly; a WHIP offer must be sendonly"):
        inspect_offer(CHROME_WHEP, role="whip")


def test_chrome_simulcast() -> None:
    summary = inspect_offer(CHROME_SIMULCAST_WHIP.encode(), role="whip")
    video = summary.video
    assert video is not None and video.direction == "sendonly"
    assert video.rids == ("q", "h", "f")
    assert video.simulcast == "send q;h;f"
    assert video.extmaps[10] == "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
    assert not summary.has_candidates
    with pytest.raises(UnprocessableContent, match="WHEP offer must be recvonly or sendrecv"):
        inspect_offer(CHROME_SIMULCAST_WHIP, role="whep")


def test_ffmpeg() -> None:
    summary = inspect_offer(FFMPEG_WHIP, role="whip")
    assert summary.setup == "passive"
    assert summary.has_candidates
    assert summary.bundle_mids == ("0", "1")
    assert summary.ice_ufrag == "6f2a9b1c"
    audio, video = summary.audio, summary.video
    assert audio is not None and video is not None
    assert (audio.codecs[0].name, audio.codecs[0].channels) == ("opus", 2)
    h264, rtx = video.codecs
    assert h264.fmtp["packetization-mode"] == "1"
    assert h264_profile(h264.fmtp) == "constrained-baseline"
    assert h264.rtcp_fb == ("nack",)
    assert (rtx.name, rtx.fmtp) == ("rtx", {"apt": "106"})


def test_obs_session_level_transport() -> None:
    summary = inspect_offer(OBS_WHIP, role="whip")
    assert summary.ice_ufrag == "Rw5+" and summary.setup == "actpass"
    assert summary.ice_options == ("ice2,trickle",)
    assert not summary.has_candidates
    video = summary.video
    assert video is not None
    assert [h264_profile(c.fmtp) for c in video.codecs] == ["high", "constrained-high"]
    assert video.codecs[1].rtcp_fb == ("nack pli",)


@pytest.mark.parametrize("name", sorted(ALL))
def test_aiortc_parses_every_accepted_fixture(name: str) -> None:
    summary = inspect_offer(ALL[name], role=ROLE[name])  # type: ignore[arg-type]
    _assert_aiortc_can_take(ALL[name], summary)


def test_lf_line_endings_and_trailing_blank_lines() -> None:
    summary = inspect_offer(FFMPEG_WHIP.replace("\r\n", "\n") + "\n\n", role="whip")
    assert summary.bundle_mids == ("0", "1")


def test_rfc_defaults_are_reported() -> None:
    text = OBS_WHIP.replace("a=setup:actpass\r\n", "").replace("a=sendonly\r\n", "")
    summary = inspect_offer(text, role="whip")
    assert summary.setup == "actpass" and not summary.setup_explicit
    assert all(m.direction == "sendrecv" and not m.direction_explicit for m in summary.media)
    with_session_direction = text.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    summary = inspect_offer(with_session_direction, role="whip")
    assert [m.direction for m in summary.media] == ["sendonly", "sendonly"]


def test_wildcard_feedback_utf8_session_name_and_tabs() -> None:
    text = FFMPEG_WHIP.replace("s=FFmpegPublishSession", "s=Café\tlive").replace(
        "a=rtcp-fb:106 nack", "a=rtcp-fb:* nack pli\r\na=rtcp-fb:106 nack"
    )
    video = inspect_offer(text.encode(), role="whip").video
    assert video is not None
    assert [c.rtcp_fb for c in video.codecs] == [("nack pli", "nack"), ("nack pli",)]


def test_bundle_only_with_credentials_and_datachannel() -> None:
    text = CHROME_WHEP.replace("a=mid:1\r\n", "a=mid:1\r\na=bundle-only\r\n").replace(
        "m=video 9 ", "m=video 0 "
    )
    text += sdp(
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:Zf4u",
        "a=ice-pwd:gr8lvLeXxRz7Uv5oE2bW8m1S",
        f"a=fingerprint:{FP}",
        "a=setup:actpass",
        "a=mid:2",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
    )
    summary = inspect_offer(text, role="whep")
    assert [m.kind for m in summary.media] == ["audio", "video", "application"]
    assert summary.media[1].bundle_only and summary.media[1].port == 0


# One edit of a good offer per row: the error class, and words the client will read.
_BAD_400 = [
    ("v=0", "v=1", "starts with the line 'v=0'"),
    ("v=0\r\n", "\ufeffv=0\r\n", "'v=0'"),
    ("o=- 3522437497416370316 2 IN IP4 127.0.0.1\r\n", "", "no o= line"),
    ("o=- 3522437497416370316 2 IN IP4 127.0.0.1", "o=- 1 2 IN", "6 fields"),
    ("s=-\r\n", "s=-\r\nnot an sdp line\r\n", "'<letter>=<value>'"),
    ("s=-\r\n", "s=-\r\n\r\n", "'<letter>=<value>'"),
    ("s=-\r\n", "s=-\r\nv=0\r\n", "second v= line"),
    ("s=-", "s=-\x0b", "control characters"),
    ("s=-", "s=\u2028", "control characters"),
    ("c=IN IP4 0.0.0.0", "c=IN IP4", "c= must read"),
    ("m=video 9 UDP", "m=video 99999 UDP", "m= line reads"),
    ("UDP/TLS/RTP/SAVPF 96 97", "udp/tls/rtp/savpf 96 97", "m= line reads"),
    ("SAVPF 96 97", "SAVPF 96  97", "m= line reads"),
    ("SAVPF 96 97", "SAVPF 96 128", "0-127 except 72-76"),
    ("SAVPF 96 97", "SAVPF 96 72", "0-127 except 72-76"),
    ("SAVPF 96 97", "SAVPF 96 x", "0-127 except 72-76"),
    ("a=ice-ufrag:Zf4u", "a=ice-ufrag:Zf", "4 to 256"),
    ("a=ice-ufrag:Zf4u", "a=ice-ufrag", "needs a value"),
    ("a=ice-pwd:gr8lvLeXxRz7Uv5oE2bW8m1S", "a=ice-pwd:gr8lvLeX:Rz7Uv5oE2bW8m1S", "letters"),
    (f"a=fingerprint:{FP}", "a=fingerprint:sha-256", "fingerprint must read"),
    (f"a=fingerprint:{FP}", "a=fingerprint:sha-256 XY", "fingerprint must read"),
    ("a=setup:actpass", "a=setup:maybe", "setup must read"),
    ("a=setup:actpass", "a=setup", "setup must read"),
    ("a=mid:0", "a=mid:0\r\na=mid:1", "second a=mid"),
    ("a=mid:1", "a=mid:0", "share an a=mid"),
    ("a=mid:1", "a=mid:", "a=mid must read"),
    ("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2", "which no m-line has"),
    ("a=group:BUNDLE 0 1", "a=group", "a=group must read"),
    ("a=msid-semantic: WMS", "a=msid-semantic", "msid-semantic must read"),
    (
        "a=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:111",
        "a=recvonly\r\na=inactive\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:111",
        "more than one direction",
    ),
    ("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus", "rtpmap must read"),
    ("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/x/2", "rtpmap must read"),
    ("a=rtpmap:111 opus/48000/2", "a=rtpmap:1111 opus/48000/2", "rtpmap must read"),
    ("a=rtpmap:9 G722/8000", "a=rtpmap:96 G722/8000", "not on the m= line"),
    ("a=rtpmap:9 G722/8000", "a=rtpmap:111 G722/8000", "repeated"),
    ("a=fmtp:97 apt=96", "a=fmtp:97", "fmtp must read"),
    ("a=fmtp:97 apt=96", "a=fmtp:97 apt=x96", "apt must be an integer"),
    ("a=fmtp:111 minptime=10", "a=fmtp:111 minptime=1_0", "minptime must be an integer"),
    ("a=fmtp:97 apt=96", "a=fmtp:97 apt=96\r\na=fmtp:97 apt=96", "second a=fmtp:97"),
    ("a=fmtp:63 111/111", "a=fmtp:9 111/111\r\na=fmtp:55 x", "has no matching a=rtpmap"),
    ("a=rtcp-fb:96 nack pli", "a=rtcp-fb:96", "rtcp-fb must read"),
    ("a=rtcp-fb:96 nack pli", "a=rtcp-fb:96  nack", "rtcp-fb must read"),
    ("a=extmap:14 urn:ietf:params:rtp-hdrext:toffset", "a=extmap:x urn:a", "extmap must read"),
    ("a=extmap:14 urn:ietf:params:rtp-hdrext:toffset", "a=extmap:14/up urn:a", "extmap must"),
    ("a=extmap:14 urn:ietf:params:rtp-hdrext:toffset", "a=extmap:0 urn:a", "out of range"),
    ("a=extmap:14 urn:ietf:params:rtp-hdrext:toffset", "a=extmap:2 urn:a", "repeated"),
    ("a=rtcp:9 IN IP4 0.0.0.0", "a=rtcp:9 IN", "a=rtcp must read"),
    ("a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96", "a=rtcp-mux\r\na=ssrc:x\r\na=rtpmap:96", "ssrc"),
    (
        "a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96",
        "a=rtcp-mux\r\na=ssrc:4294967296 cname:x\r\na=rtpmap:96",
        "32 bits",
    ),
    (
        "a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96",
        "a=rtcp-mux\r\na=ssrc-group:FID a b\r\na=rtpmap:96",
        "ssrc-group",
    ),
    (
        "a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96",
        "a=rtcp-mux\r\na=rid:q/1 send\r\na=rtpmap:96",
        "a=rid must read",
    ),
    (
        "a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96",
        "a=rtcp-mux\r\na=simulcast: \r\na=rtpmap:96",
        "simulcast",
    ),
    ("a=candidate:1936595596 1 udp", "a=candidate:1936595596 one udp", "component-id"),
    ("a=candidate:1936595596 1 udp", "a=candidate:\r\na=x:", "candidate must read"),
]


@pytest.mark.parametrize(("old", "new", "message"), _BAD_400)
def test_malformed_offers_are_400(old: str, new: str, message: str) -> None:
    assert old in CHROME_WHEP
    with pytest.raises(MalformedSdp, match=re.escape(message)) as info:
        inspect_offer(CHROME_WHEP.replace(old, new, 1), role="whep")
    assert info.value.status == 400


def test_missing_transport_attributes_are_400() -> None:
    for attr in ("a=ice-ufrag", "a=ice-pwd", "a=fingerprint"):
        text = re.sub(f"{attr}:.*\r\n", "", FFMPEG_WHIP)
        with pytest.raises(MalformedSdp, match=f"has no {attr}"):
            inspect_offer(text, role="whip")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "'v=0'"),
        (b"v=0\r\n\xff\r\n", "must be UTF-8"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no m= line"),
        ("v=0\r\n" + "a=x\r\n" * 4096, "more than 4096 lines"),
    ],
)
def test_not_an_offer_is_400(body: str | bytes, message: str) -> None:
    with pytest.raises(MalformedSdp, match=re.escape(message)):
        inspect_offer(body, role="whip")


_BAD_422 = [
    ("m=video 9 UDP", "m=text 9 UDP", "only audio, video and application"),
    ("m=video 9 UDP/TLS/RTP/SAVPF", "m=audio 9 UDP/TLS/RTP/SAVPF", "more than one audio"),
    ("m=video 9 UDP", "m=video 0 UDP", "rejected (port 0)"),
    (
        "a=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:111",
        "a=inactive\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:111",
        "is inactive",
    ),
    (
        "a=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:111",
        "a=sendonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:111",
        "is sendonly",
    ),
    (
        "a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96",
        "a=rtcp-rsize\r\na=rtpmap:96",
        "needs a=rtcp-mux",
    ),
    ("a=setup:actpass\r\na=mid:1", "a=setup:passive\r\na=mid:1", "same a=setup"),
    ("a=setup:actpass\r\na=mid:1", "a=setup:holdconn\r\na=mid:1", "holdconn"),
    ("a=group:BUNDLE 0 1", "a=group:BUNDLE 0\r\na=group:BUNDLE 1", "more than one BUNDLE"),
    ("a=extmap:14 urn:ietf:params:rtp-hdrext:toffset", "a=extmap:14 urn:a vad=on", "extmap"),
    (
        "a=rtcp-mux\r\na=rtcp-rsize\r\na=rtpmap:96",
        "a=rtcp-mux\r\na=ssrc:1 foo\r\na=rtpmap:96",
        "ssrc",
    ),
]


@pytest.mark.parametrize(("old", "new", "message"), _BAD_422)
def test_unsupported_offers_are_422(old: str, new: str, message: str) -> None:
    assert old in CHROME_WHEP
    with pytest.raises(UnprocessableContent, match=re.escape(message)) as info:
        inspect_offer(CHROME_WHEP.replace(old, new, 1), role="whep")
    assert info.value.status == 422


def test_offer_without_audio_or_video_is_422() -> None:
    datachannel_only = sdp(
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=ice-ufrag:Zf4u",
        "a=ice-pwd:gr8lvLeXxRz7Uv5oE2bW8m1S",
        f"a=fingerprint:{FP}",
        "a=setup:actpass",
        "a=mid:0",
    )
    with pytest.raises(UnprocessableContent, match="neither an audio nor a video"):
        inspect_offer(datachannel_only, role="whep")


def test_bundle_only_without_credentials_is_422() -> None:
    # JSEP leaves transport attributes off bundle-only m-lines; aiortc 1.16 needs them.
    text = FFMPEG_WHIP.split("m=video")[0] + sdp(
        "m=video 0 UDP/TLS/RTP/SAVPF 106",
        "a=mid:1",
        "a=bundle-only",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:106 H264/90000",
    )
    with pytest.raises(UnprocessableContent, match="bundle-only without a=ice-ufrag"):
        inspect_offer(text, role="whip")


def test_too_many_m_lines_is_422() -> None:
    section = FFMPEG_WHIP[FFMPEG_WHIP.index("m=audio") : FFMPEG_WHIP.index("m=video")]
    with pytest.raises(UnprocessableContent, match="more than 64 m-lines"):
        inspect_offer(FFMPEG_WHIP + section * 64, role="whip")


@pytest.mark.parametrize(
    ("plid", "profile"),
    [
        (None, "constrained-baseline"),
        ("42e01f", "constrained-baseline"),
        ("42E01F", "constrained-baseline"),
        ("42c01f", "constrained-baseline"),
        ("4d801f", "constrained-baseline"),
        ("58c01f", "constrained-baseline"),
        ("42001f", "baseline"),
        ("42801f", "baseline"),
        ("58801f", "baseline"),
        ("4d001f", "main"),
        ("4d401f", "main"),
        ("58001f", "extended"),
        ("640032", "high"),
        ("64001f", "high"),
        ("640c1f", "constrained-high"),
        ("6e0028", "high-10"),
        ("7a0028", "high-422"),
        ("f40028", "high-444"),
        ("6e1028", "high-10-intra"),
        ("7a1028", "high-422-intra"),
        ("f41028", "high-444-intra"),
        ("2c1028", "cavlc-444-intra"),
    ],
)
def test_h264_profile(plid: str | None, profile: str) -> None:
    fmtp = {"packetization-mode": "1"}
    if plid is not None:
        fmtp["profile-level-id"] = plid
    assert h264_profile(fmtp) == profile
    if plid is not None:
        assert h264_profile({"Profile-Level-Id": plid}) == profile


@pytest.mark.parametrize("plid", ["", "42e0", "42e01f0", "zzzzzz", "42e01 ", "640401", "ff0000"])
def test_h264_profile_garbage(plid: str) -> None:
    with pytest.raises(ValueError, match="profile-level-id"):
        h264_profile({"profile-level-id": plid})


def test_public_surface() -> None:
    assert set(offer_module.__all__) == {
        "MAX_MEDIA_SECTIONS",
        "MAX_OFFER_LINES",
        "Direction",
        "OfferCodec",
        "OfferMedia",
        "OfferSummary",
        "Setup",
        "h264_profile",
        "inspect_offer",
    }
    # Mirrors what aiortc int()s in fmtp; a new entry there needs a check here.
    assert set(offer_module._FMTP_INT_PARAMETERS) == set(aiortc_sdp.FMTP_INT_PARAMETERS)


# Property tests: garbage and near-misses only ever raise the documented errors, and whatever
# passes is something aiortc's parser takes without an exception.


def _assert_aiortc_can_take(text: str | bytes, summary: OfferSummary) -> None:
    if isinstance(text, bytes):
        text = text.decode()
    parsed = aiortc_sdp.SessionDescription.parse(text)
    assert len(parsed.media) == len(summary.media)
    for media, ours in zip(parsed.media, summary.media, strict=True):
        # What RTCPeerConnection.setRemoteDescription and createAnswer then rely on.
        assert media.ice.usernameFragment and media.ice.password
        assert media.dtls is not None or not summary.setup_explicit
        assert media.kind == ours.kind and (media.rtp.muxId or None) == ours.mid
        if media.kind in ("audio", "video"):
            assert media.rtcp_mux
            assert (media.direction is not None) == ours.direction_explicit
            assert [c.payloadType for c in media.rtp.codecs] == [c.pt for c in ours.codecs]


_ALPHABET = st.sampled_from(
    [*"av=:/ 0129\r\n\t-;", "\x00", "\x85", "\u2028", "é", "\xa0", "a=", "m=", "IN IP4 "]
)


@st.composite
def _mutated(draw: st.DrawFn, base: str) -> str:
    text = base
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "drop", "swap", "dup"]))
        pos = draw(st.integers(0, len(text)))
        lines = text.split("\r\n")
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        if op == "insert":
            text = text[:pos] + draw(_ALPHABET) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 6)) :]
        elif op == "replace":
            text = text[:pos] + draw(st.text(max_size=4)) + text[pos + 1 :]
        elif op == "drop":
            text = "\r\n".join(lines[:i] + lines[i + 1 :])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
            text = "\r\n".join(lines)
        else:
            text = "\r\n".join([*lines[:i], lines[j], *lines[i:]])
    return text


def _inspect(text: str | bytes, role: str) -> None:
    try:
        summary = inspect_offer(text, role=role)  # type: ignore[arg-type]
    except (MalformedSdp, UnprocessableContent) as exc:
        assert exc.detail
        return
    _assert_aiortc_can_take(text, summary)


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.text(max_size=120), st.binary(max_size=120), st.just("v=0\r\n")))
def test_random_input_only_raises_documented_errors(text: str | bytes) -> None:
    _inspect(text, "whip")
    _inspect("v=0\r\n" + text if isinstance(text, str) else text, "whep")


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(ALL)).flatmap(lambda name: st.tuples(st.just(name), _mutated(ALL[name])))
)
def test_mutated_offers_only_raise_documented_errors(case: tuple[str, str]) -> None:
    name, text = case
    _inspect(text, ROLE[name])
