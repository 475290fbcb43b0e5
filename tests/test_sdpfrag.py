"""RFC 8840 trickle-ice-sdpfrag parsing and the ICE restart answer (RFC 9725 §4.3)."""

from __future__ import annotations

import re

import pytest
from aiortc.sdp import candidate_from_sdp
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcast.errors import MalformedSdpFrag
from broadcast.protocol import sdpfrag
from broadcast.protocol.sdpfrag import (
    MAX_CANDIDATES,
    FragMedia,
    SdpFrag,
    candidate_problem,
    parse_sdpfrag,
)
from tests.support.sdpfrag_build import build_restart_answer

HOST = "2796427011 1 udp 2113937151 6c1a2f5e-0b1f-4a4c-9d1e-2f2d5b0c6f11.local 61847 typ host"
SRFLX = "1936595596 1 udp 1677729535 203.0.113.7 61847 typ srflx raddr 0.0.0.0 rport 0"

# What whip-whep.js (medooze, 2024) PATCHes: the current ufrag/pwd on every request, one dummy
# m-line per mid, "a=" + RTCIceCandidate.candidate, CRLF.
WHIP_JS_TRICKLE = (
    "a=ice-ufrag:Ml4Q\r\n"
    "a=ice-pwd:4yBgbNGDHmjDfDy6Y0Fxdc5a\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
    "a=mid:0\r\n"
    f"a=candidate:{HOST} generation 0 ufrag Ml4Q network-cost 999\r\n"
    f"a=candidate:{SRFLX} generation 0 ufrag Ml4Q network-cost 999\r\n"
    "a=end-of-candidates\r\n"
)

# RFC 9725 §4.3 trickle example (LF line ends, TCP active candidates on port 9).
RFC_9725_TRICKLE = """a=ice-ufrag:EsAw
a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1
m=audio 9 RTP/AVP 0
a=mid:0
a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1
a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2
a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active generation 0 ufrag EsAw network-id 1
a=candidate:2154773085 1 tcp 1518214911 198.51.100.2 9 typ host tcptype active generation 0 ufrag EsAw network-id 2
a=end-of-candidates
"""  # noqa: E501

# whip-whep.js restart(): only the new credentials (RFC 9725 §4.3 ICE restart example).
ICE_RESTART = "a=ice-ufrag:ysXw\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n"


def test_whip_js_trickle() -> None:
    frag = parse_sdpfrag(WHIP_JS_TRICKLE)
    assert frag.ice_ufrag == "Ml4Q"
    assert frag.ice_pwd == "4yBgbNGDHmjDfDy6Y0Fxdc5a"
    assert frag.is_ice_restart  # credentials present: the caller compares them
    assert frag.ice_options == ()
    assert len(frag.media) == 1
    media = frag.media[0]
    assert (media.mid, media.mline_index, media.end_of_candidates) == ("0", 0, True)
    assert media.candidates[0].startswith(HOST)
    assert frag.has_end_of_candidates
    assert frag.candidates[1] == ("0", 0, media.candidates[1])
    for value in media.candidates:
        candidate = candidate_from_sdp(value)
        assert candidate.port == 61847
    assert candidate_from_sdp(media.candidates[1]).relatedPort == 0


def test_rfc_example_with_lf_and_tcp_candidates() -> None:
    frag = parse_sdpfrag(RFC_9725_TRICKLE)
    assert frag.ice_ufrag == "EsAw"
    values = frag.media[0].candidates
    assert len(values) == 4
    assert candidate_from_sdp(values[2]).tcpType == "active"


def test_ice_restart_body() -> None:
    frag = parse_sdpfrag(ICE_RESTART.encode())
    assert frag == SdpFrag("ysXw", "vw5LmwG4y/e6dPP/zAP9Gp5k", (), ())
    assert frag.is_ice_restart
    assert not frag.has_end_of_candidates


def test_trickle_without_credentials_is_not_a_restart() -> None:
    frag = parse_sdpfrag(f"m=video 9 RTP/AVP 0\na=mid:1\na=candidate:{HOST}\n")
    assert not frag.is_ice_restart
    assert frag.media == (FragMedia("1", 0, (HOST,), False),)


def test_session_level_end_of_candidates_and_options() -> None:
    frag = parse_sdpfrag("a=ice-options:trickle ice2\r\na=end-of-candidates\r\n")
    assert frag.end_of_candidates and frag.has_end_of_candidates
    assert frag.ice_options == ("trickle", "ice2")
    assert frag.media == ()


def test_media_level_credentials_and_several_sections() -> None:
    body = (
        "a=ice-options:trickle\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:ysXw\r\n"
        "a=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\na=ice-options:trickle renomination\r\n"
        f"a=candidate:{HOST}\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ice-ufrag:ysXw\r\n"
        f"a=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\na=candidate:{SRFLX}\r\na=end-of-candidates\r\n"
        "a=x-unknown:anything goes here\r\nb=AS:30\r\n"
    )
    frag = parse_sdpfrag(body)
    assert frag.ice_ufrag == "ysXw"
    assert frag.ice_options == ("trickle", "renomination")
    assert [(m.mid, m.mline_index, m.end_of_candidates) for m in frag.media] == [
        ("0", 0, False),
        ("1", 1, True),
    ]
    assert frag.candidates == (("0", 0, HOST), ("1", 1, SRFLX))


def test_old_whip_js_bodies_are_tolerated() -> None:
    # whip-whep.js 2021 wrote "m=audio RTP/AVP 0" (no port) and misspelt end-of-candidates.
    body = f"m=audio RTP/AVP 0\r\na=mid:0\r\na=candidate:{HOST}\r\na=end-of-candiadates\r\n"
    frag = parse_sdpfrag(body)
    assert frag.media[0].candidates == (HOST,)
    assert not frag.has_end_of_candidates


def test_candidate_limit() -> None:
    head = "m=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
    fine = head + f"a=candidate:{HOST}\r\n" * MAX_CANDIDATES
    assert len(parse_sdpfrag(fine).candidates) == MAX_CANDIDATES
    with pytest.raises(MalformedSdpFrag, match="more than 64 candidates"):
        parse_sdpfrag(fine + f"a=candidate:{HOST}\r\n")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "empty body"),
        ("\r\n\r\n", "empty body"),
        ("hello world\r\n", "expected '<letter>=<value>'"),
        ("A=ice-ufrag:abcd\r\n", "expected '<letter>=<value>'"),
        ("a=ice-ufrag:abcdé\r\n", "ASCII"),
        (b"a=ice-ufrag:\xff\xfe\r\n", "ASCII"),
        ("a=ice-ufrag:abcd\x00\r\n", "control characters"),
        ("a=ice-ufrag:ab\rcd\r\n", "control characters"),
        ("a=ice-ufrag:abc\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n", "4 to 256"),
        ("a=ice-ufrag:ab-d\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n", "letters, digits"),
        ("a=ice-ufrag:abcd\r\na=ice-pwd:short\r\n", "22 to 256"),
        ("a=ice-ufrag:abcd\r\na=ice-pwd:vw5LmwG4y:e6dPP/zAP9Gp5k\r\n", "letters, digits"),
        ("a=ice-ufrag:abcd\r\n", "sent together"),
        ("a=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\n", "sent together"),
        ("a=ice-ufrag:abcd\r\na=ice-ufrag:efgh\r\n", "conflicting a=ice-ufrag"),
        (f"a=candidate:{HOST}\r\n", "must follow an m= line"),
        ("a=mid:0\r\n", "must follow an m= line"),
        ("m=\r\n", "media type"),
        ("m=audio 9 RTP/AVP 0\r\na=mid:\r\n", "identification tag"),
        ("m=audio 9 RTP/AVP 0\r\na=mid:0\r\na=mid:1\r\n", "second a=mid"),
        ("m=audio 9 RTP/AVP 0\r\na=mid:0\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n", "same a=mid"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate\r\n", "needs a value"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 2113937151 192.0.2.1 5000\r\n", "typ"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 1 192.0.2.1 5000 type host\r\n", "typ"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 x udp 1 192.0.2.1 5000 typ host\r\n", "component"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp -1 192.0.2.1 5000 typ host\r\n", "priority"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 1 192.0.2.1 65536 typ host\r\n", "port"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 1 [::1] 5000 typ host\r\n", "address"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 1 ::1 5000 typ host raddr\r\n", "pairs"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 1 ::1 5000 typ host rport x\r\n", "rport"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1 1 udp 1 ::1 9 typ host raddr a_b\r\n", "raddr"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:1  1 udp 1 ::1 5000 typ host\r\n", "single spaces"),
        ("m=audio 9 RTP/AVP 0\r\na=candidate:a-b 1 udp 1 ::1 5000 typ host\r\n", "foundation"),
        ("a=ice-options:x\r\n" * 600, "more than 512 lines"),
    ],
)
def test_malformed(body: str | bytes, message: str) -> None:
    with pytest.raises(MalformedSdpFrag, match=re.escape(message)):
        parse_sdpfrag(body)


def test_error_is_a_400() -> None:
    with pytest.raises(MalformedSdpFrag) as info:
        parse_sdpfrag("nonsense")
    assert info.value.status == 400
    assert "line 1" in info.value.detail


def test_restart_answer() -> None:
    body = build_restart_answer(
        "Ab12",
        "0123456789abcdefABCDEF",
        ("trickle",),
        [("0", 0, "1 1 udp 2130706431 198.51.100.1 39132 typ host")],
        ice_lite=True,
    )
    assert body == (
        "a=ice-lite\r\n"
        "a=ice-options:trickle\r\n"
        "a=ice-ufrag:Ab12\r\n"
        "a=ice-pwd:0123456789abcdefABCDEF\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
        "a=mid:0\r\n"
        "a=candidate:1 1 udp 2130706431 198.51.100.1 39132 typ host\r\n"
        "a=end-of-candidates\r\n"
    )
    # whip-whep.js reads the answer with these very expressions; they need the CRLF.
    ufrag, pwd = re.search(r"a=ice-ufrag:(.*)\r\n", body), re.search(r"a=ice-pwd:(.*)\r\n", body)
    assert ufrag is not None and ufrag[1] == "Ab12"
    assert pwd is not None and pwd[1] == "0123456789abcdefABCDEF"
    assert len(re.findall(r"(a=candidate:.*\r\n)", body)) == 1


def test_restart_answer_groups_candidates_by_m_line() -> None:
    cands = [("1", 1, SRFLX), ("0", 0, HOST), ("1", 1, HOST)]
    body = build_restart_answer("Ab12", "0123456789abcdefABCDEF", (), cands)
    assert "ice-lite" not in body and "ice-options" not in body
    frag = parse_sdpfrag(body)
    assert frag.candidates == (("0", 0, HOST), ("1", 1, SRFLX), ("1", 1, HOST))
    assert all(m.end_of_candidates for m in frag.media)


def test_restart_answer_without_candidates() -> None:
    body = build_restart_answer("Ab12", "0123456789abcdefABCDEF", (), [])
    assert body.endswith("a=ice-pwd:0123456789abcdefABCDEF\r\na=end-of-candidates\r\n")
    assert parse_sdpfrag(body).end_of_candidates


@pytest.mark.parametrize(
    ("ufrag", "pwd", "options", "candidates"),
    [
        ("abc", "0123456789abcdefABCDEF", (), []),
        ("abcd", "0123456789abcdef", (), []),
        ("abcd", "0123456789abcdefABCDEF", ("tri ckle",), []),
        ("abcd", "0123456789abcdefABCDEF", (), [("0", 0, "garbage")]),
        ("abcd", "0123456789abcdefABCDEF", (), [("", 0, HOST)]),
        ("abcd", "0123456789abcdefABCDEF", (), [("0\r\nm=x", 0, HOST)]),
        ("abcd", "0123456789abcdefABCDEF", (), [("0", 0, HOST + "\r\na=ice-lite")]),
    ],
)
def test_restart_answer_rejects_bad_input(
    ufrag: str, pwd: str, options: tuple[str, ...], candidates: list[tuple[str, int, str]]
) -> None:
    with pytest.raises(ValueError):
        build_restart_answer(ufrag, pwd, options, candidates)


def test_candidate_problem_accepts_what_aiortc_makes() -> None:
    for value in (
        HOST,
        SRFLX,
        "a0f3 2 UDP 16777215 2001:db8::1 3478 typ relay raddr 192.0.2.1 rport 5",
    ):
        assert candidate_problem(value) is None
        candidate_from_sdp(value)


def test_public_surface() -> None:
    assert set(sdpfrag.__all__) == {
        "MAX_CANDIDATES",
        "MAX_SDPFRAG_LINES",
        "FragMedia",
        "SdpFrag",
        "candidate_problem",
        "ice_pwd_problem",
        "ice_ufrag_problem",
        "parse_sdpfrag",
        "sdp_lines",
    }
    assert all(hasattr(sdpfrag, name) for name in sdpfrag.__all__)


# Property tests: whatever arrives, only MalformedSdpFrag comes out.

_SDP_ALPHABET = st.sampled_from(
    [*"aAmz09 :=/+.-\t\r\n", "\x00", "\x0b", "\x85", "\u2028", "é", "candidate:", "typ "]
)


@st.composite
def _mutated(draw: st.DrawFn, base: str) -> str:
    text = base
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "lines"]))
        pos = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:pos] + draw(_SDP_ALPHABET) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 12)) :]
        elif op == "replace":
            text = text[:pos] + draw(st.text(max_size=8)) + text[pos + 1 :]
        else:
            lines = text.split("\r\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i] + draw(st.sampled_from(["", " ", ":", "0"]))
            text = "\r\n".join(lines)
    return text


def _parse_or_malformed(body: str | bytes) -> SdpFrag | None:
    try:
        frag = parse_sdpfrag(body)
    except MalformedSdpFrag as exc:
        assert exc.detail
        return None
    for _mid, _index, value in frag.candidates:
        candidate_from_sdp(value)  # what the HTTP layer does next must not raise
    return frag


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_input_only_raises_malformed(body: str | bytes) -> None:
    _parse_or_malformed(body)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([WHIP_JS_TRICKLE, RFC_9725_TRICKLE, ICE_RESTART]).flatmap(_mutated))
def test_mutated_bodies_only_raise_malformed(body: str) -> None:
    _parse_or_malformed(body)


ICE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
_ICE = st.text(ICE_CHARS, min_size=1)
_CANDIDATE = st.builds(
    "{} {} {} {} {} {} typ {}".format,
    _ICE.map(lambda s: s[:32]),
    st.integers(1, 256),
    st.sampled_from(["udp", "tcp", "UDP"]),
    st.integers(1, 2**31 - 1),
    st.sampled_from(["192.0.2.1", "2001:db8::7", "abc-1.local", "10.0.0.254"]),
    st.integers(0, 65535),
    st.sampled_from(["host", "srflx", "prflx", "relay"]),
)


@settings(max_examples=50, deadline=None)
@given(
    ufrag=st.text(ICE_CHARS, min_size=4, max_size=32) | st.just("U" * 256),
    pwd=st.text(ICE_CHARS, min_size=22, max_size=40) | st.just("P" * 256),
    options=st.lists(_ICE.map(lambda s: s[:12]), max_size=3, unique=True),
    lite=st.booleans(),
    mids=st.lists(st.text("0123456789abcdef", min_size=1, max_size=3), max_size=4, unique=True),
    data=st.data(),
)
def test_restart_answer_round_trip(
    ufrag: str, pwd: str, options: list[str], lite: bool, mids: list[str], data: st.DataObject
) -> None:
    candidates = [
        (mid, index, value)
        for index, mid in enumerate(mids)
        for value in data.draw(st.lists(_CANDIDATE, min_size=1, max_size=4))
    ]
    frag = parse_sdpfrag(build_restart_answer(ufrag, pwd, tuple(options), candidates, lite))
    assert (frag.ice_ufrag, frag.ice_pwd, frag.ice_options) == (ufrag, pwd, tuple(options))
    assert frag.candidates == tuple(candidates)
    assert frag.has_end_of_candidates
    for _mid, _index, value in frag.candidates:
        candidate_from_sdp(value)
