"""a=rid (RFC 8851) and a=simulcast (RFC 8853) in WHIP offers and our answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcast.errors import InvalidSimulcast, MalformedSdp
from broadcast.protocol.offer import inspect_offer
from broadcast.protocol.simulcast import (
    MAX_LAYERS,
    RidDescription,
    Simulcast,
    add_answer_lines,
    parse_rid,
    parse_simulcast,
    section_simulcast,
)
from tests.test_offer import FP, sdp

# Captured from Chromium 156 (player/publish.html, simulcast on, VP8 preferred): rids
# l/m/h, low to high, as player/whip-sender.js orders them.
FIXTURES = Path(__file__).parent / "fixtures"
CHROMIUM_OFFER = (FIXTURES / "chromium156-simulcast-whip-offer.sdp").read_bytes().decode()

# OBS 32.1 style (libdatachannel): H.264 only, one rid per encoder, highest first, and
# a=ssrc lines for every layer besides the rids.
OBS_OFFER = sdp(
    "v=0",
    "o=rtc 2987441238 0 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=msid-semantic:WMS *",
    "a=ice-options:ice2,trickle",
    "a=fingerprint:" + FP,
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "c=IN IP4 0.0.0.0",
    "a=mid:0",
    "a=sendonly",
    "a=ssrc:1701 cname:obs",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1",
    "a=setup:actpass",
    "a=ice-ufrag:Qm7w",
    "a=ice-pwd:Gq6kP3v0bT1mXw8yZ2cR4nLh",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "c=IN IP4 0.0.0.0",
    "a=mid:1",
    "a=sendonly",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "a=ssrc:1702 cname:obs",
    "a=ssrc:1703 cname:obs",
    "a=ssrc:1704 cname:obs",
    "a=rtcp-mux",
    "a=rtpmap:96 H264/90000",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=rtcp-fb:96 goog-remb",
    "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1;level-asymmetry-allowed=1",
    "a=rid:0 send",
    "a=rid:1 send",
    "a=rid:2 send",
    "a=simulcast:send 0;1;2",
    "a=setup:actpass",
    "a=ice-ufrag:Qm7w",
    "a=ice-pwd:Gq6kP3v0bT1mXw8yZ2cR4nLh",
)


def test_chromium_offer_layers_and_answer_lines() -> None:
    summary = inspect_offer(CHROMIUM_OFFER, role="whip")
    (index, simulcast), *others = summary.simulcast().items()
    assert others == [] and index == 1 and summary.media[1].kind == "video"
    assert simulcast.layers == ("l", "m", "h") and simulcast.paused == frozenset()
    assert simulcast.answer_lines() == [
        "a=rid:l recv",
        "a=rid:m recv",
        "a=rid:h recv",
        "a=simulcast:recv l;m;h",
    ]


def test_obs_style_offer() -> None:
    simulcast = inspect_offer(OBS_OFFER, role="whip").simulcast()[1]
    assert simulcast.layers == ("0", "1", "2")
    assert simulcast.rids == tuple(RidDescription(r, "send") for r in "012")


def test_whep_offers_carry_no_simulcast() -> None:
    whep = CHROMIUM_OFFER.replace("a=sendonly", "a=recvonly")
    assert inspect_offer(whep, role="whep").simulcast() == {}


def test_rfc8851_restrictions_and_rfc8853_alternatives() -> None:
    # RFC 8853 §5.1's example: rid 1, then 2 or 3; ~ marks a paused stream.
    rids = [
        "1 send pt=97;max-width=1280;max-height=720;max-fps=29.97",
        "2 send pt=98;max-width=320;max-height=180",
        "3 send pt=99;max-br=64000;depend=1",
        "4 recv pt=97",
    ]
    simulcast = section_simulcast(rids, ["send 1;~2,3"], [97, 98, 99])
    assert simulcast is not None
    assert simulcast.streams == (("1",), ("2", "3")) and simulcast.paused == {"2"}
    assert simulcast.rids[0] == RidDescription(
        "1", "send", (97,), {"max-width": "1280", "max-height": "720", "max-fps": "29.97"}
    )
    assert simulcast.rids[2].restrictions == {"max-br": "64000", "depend": "1"}
    assert simulcast.answer_lines()[-1] == "a=simulcast:recv 1;~2,3"
    assert section_simulcast(["a send"], []) is None  # a=rid alone restricts one stream


@pytest.mark.parametrize(
    ("rids", "simulcast", "expected"),
    [
        (["h send", "h send"], ["send h"], "defined twice"),
        (["h send"], ["send h;m"], "rid m, which has no 'a=rid:m send'"),
        (["h recv"], ["send h"], "rid h, which has no 'a=rid:h send'"),
        (["h send"], ["recv h"], "takes 'send', not 'recv'"),
        (["h send", "m recv"], ["send h recv m"], "takes 'send', not 'recv'"),
        (["h send"], ["send h", "send h"], "more than one a=simulcast"),
        (["h send"], ["send h;h"], "names rid h twice"),
        (["h send"], ["send"], "must read 'send <rid>;<rid>...'"),
        (["h send"], ["send h;"], "is not a rid"),
        (["h send"], ["send ~~h"], "is not a rid"),
        (["h send"], ["sendonly h"], "must be send or recv"),
        (["h send"], ["send h send h"], "must be send or recv"),
        (["h.1 send"], ["send h.1"], "1-255 letters"),
        (["h sendrecv"], ["send h"], "direction send or recv"),
        (["h send pt=100"], ["send h"], "pt=100 is not on the m= line"),
        (["h send pt=1x"], ["send h"], "payload types 0-127"),
        (["h send max-width=1;pt=96"], ["send h"], "pt=<list> must come first"),
        (["h send max-width=wide"], ["send h"], "max-width takes an integer"),
        (["h send max-fps"], ["send h"], "max-fps takes a number"),
        (["h send max-br=1;max-br=2"], ["send h"], "max-br is given twice"),
        (["h send a b"], ["send h"], "is not a restriction"),
        ([f"r{i} send" for i in range(9)], [f"send {';'.join(f'r{i}' for i in range(9))}"], "8"),
    ],
)
def test_invalid_simulcast_is_a_400(rids: list[str], simulcast: list[str], expected: str) -> None:
    with pytest.raises(InvalidSimulcast) as caught:
        section_simulcast(rids, simulcast, [96, 97])
    assert expected in caught.value.detail
    assert caught.value.status == 400 and isinstance(caught.value, MalformedSdp)


def test_invalid_simulcast_in_an_offer_is_malformed_sdp() -> None:
    bad = CHROMIUM_OFFER.replace("a=simulcast:send l;m;h", "a=simulcast:send l;m;x")
    with pytest.raises(InvalidSimulcast, match="rid x"):
        inspect_offer(bad, role="whip")


ANSWER = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\n"


def test_answer_lines_go_to_the_end_of_their_section() -> None:
    simulcast = Simulcast("send", (("h",), ("l",)), rids=(RidDescription("h", "send"),))
    assert add_answer_lines(ANSWER, {1: simulcast}) == (
        "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\n"
        "a=rid:h recv\r\na=rid:l recv\r\na=simulcast:recv h;l\r\n"
    )
    assert add_answer_lines(ANSWER, {0: simulcast}) == (
        "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\n"
        "a=rid:h recv\r\na=rid:l recv\r\na=simulcast:recv h;l\r\nm=video 9 X 96\r\na=mid:1\r\n"
    )
    assert add_answer_lines(ANSWER, {}) is ANSWER  # no simulcast: byte for byte
    assert add_answer_lines("v=0\nm=video 9 X 96", {0: simulcast}).endswith("recv h;l")


PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
RID_TEXT = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)


@given(PRINTABLE | st.text(max_size=40))
def test_untrusted_rid_or_simulcast_values_raise_only_invalid_simulcast(text: str) -> None:
    for parse in (parse_rid, parse_simulcast):
        try:
            parse(text)
        except InvalidSimulcast:
            pass


@given(
    st.lists(
        st.builds(
            "{} {}{}".format,
            RID_TEXT,
            st.sampled_from(["send", "recv", "x"]),
            st.sampled_from(["", " pt=96", " max-width=640;max-fps=30", " pt=", " ;"]),
        ),
        max_size=5,
    ),
    st.lists(
        st.builds(
            "{} {}".format,
            st.sampled_from(["send", "recv"]),
            st.lists(RID_TEXT.map(lambda r: r if len(r) % 3 else "~" + r), min_size=1).map(
                ";".join
            ),
        ),
        max_size=2,
    ),
)
def test_untrusted_sections_raise_only_invalid_simulcast(
    rids: list[str], simulcast: list[str]
) -> None:
    try:
        result = section_simulcast(rids, simulcast, [96])
    except InvalidSimulcast:
        return
    if result is not None:
        assert 0 < len(result.layers) <= MAX_LAYERS
        assert result.answer_lines()[-1] == "a=simulcast:recv " + simulcast[0].split(" ")[1]


@given(st.lists(RID_TEXT, min_size=1, max_size=MAX_LAYERS, unique=True))
def test_valid_layers_round_trip_into_the_answer(layers: list[str]) -> None:
    result = section_simulcast([f"{r} send" for r in layers], ["send " + ";".join(layers)])
    assert result is not None and result.layers == tuple(layers)
    assert result.answer_lines() == [f"a=rid:{r} recv" for r in layers] + [
        "a=simulcast:recv " + ";".join(layers)
    ]
