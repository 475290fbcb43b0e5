"""RTP/RTCP header helpers, checked against literal bytes and aiortc's own parsers."""

from __future__ import annotations

import datetime

import pytest
from aiortc.clock import NTP_EPOCH, datetime_to_ntp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtpPacket,
    pack_header_extensions,
    unpack_header_extensions,
    unwrap_rtx,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import broadcast.protocol.rtp as rtp
from broadcast.protocol.rtp import (
    NTP_UNIX_OFFSET,
    abs_send_time,
    abs_send_time_bytes,
    ntp_middle32,
    ntp_to_seconds,
    one_byte_extension_block,
    rtp_header,
    rtx_payload,
    seconds_to_ntp,
    seq_diff,
    seq_newer,
    ts_diff,
    ts_newer,
)

ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def test_public_surface() -> None:
    for name in rtp.__all__:
        assert hasattr(rtp, name)
    assert "rtp_header" in rtp.__all__


# --- rtp_header, RFC 3550 §5.1 ------------------------------------------------------------


def test_rtp_header_literal() -> None:
    header = rtp_header(
        marker=True, payload_type=96, sequence=0x1234, timestamp=0xDEADBEEF, ssrc=0x01020304
    )
    # V=2 P=0 X=0 CC=0 | M=1 PT=96 | seq | timestamp | SSRC
    assert header == bytes.fromhex("80e0 1234 deadbeef 01020304")


def test_rtp_header_wraps_sequence_and_timestamp() -> None:
    header = rtp_header(
        marker=False, payload_type=0, sequence=0x10005, timestamp=-1, ssrc=0xFFFFFFFF
    )
    assert header == bytes.fromhex("8000 0005 ffffffff ffffffff")


def test_rtp_header_with_extension_literal() -> None:
    block = one_byte_extension_block([(3, b"\x12\x34\x56")])
    header = rtp_header(
        marker=False, payload_type=111, sequence=1, timestamp=2, ssrc=3, extension=block
    )
    # X bit set; 0xBEDE, 1 word; |ID=3|L=2| and the 3 abs-send-time bytes.
    assert header == bytes.fromhex("906f 0001 00000002 00000003 bede0001 32123456")


@pytest.mark.parametrize("payload_type", [-1, 128, 255])
def test_rtp_header_rejects_payload_type(payload_type: int) -> None:
    with pytest.raises(ValueError, match="payload type"):
        rtp_header(marker=False, payload_type=payload_type, sequence=0, timestamp=0, ssrc=0)


@pytest.mark.parametrize(
    "extension",
    [
        bytes.fromhex("bede"),  # no length word
        bytes.fromhex("bede0001"),  # claims one word, has none
        bytes.fromhex("bede0000 10"),  # not a whole number of words
        bytes.fromhex("bede0001 10610000 00000000"),  # one word claimed, two present
    ],
)
def test_rtp_header_rejects_malformed_extension(extension: bytes) -> None:
    with pytest.raises(ValueError, match="extension"):
        rtp_header(
            marker=False, payload_type=96, sequence=0, timestamp=0, ssrc=0, extension=extension
        )


@settings(max_examples=100, deadline=None)
@given(
    marker=st.booleans(),
    payload_type=st.integers(0, 127),
    sequence=u16,
    timestamp=u32,
    ssrc=u32,
    payload=st.binary(max_size=32),
)
def test_rtp_header_parses_with_aiortc(
    marker: bool, payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes
) -> None:
    data = (
        rtp_header(
            marker=marker,
            payload_type=payload_type,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
        )
        + payload
    )
    packet = RtpPacket.parse(data)
    assert (packet.version, packet.padding_size, packet.csrc) == (2, 0, [])
    assert packet.marker == marker
    assert packet.payload_type == payload_type
    assert packet.sequence_number == sequence
    assert packet.timestamp == timestamp
    assert packet.ssrc == ssrc
    assert packet.payload == payload


def _extensions_map() -> HeaderExtensionsMap:
    extensions_map = HeaderExtensionsMap()
    extensions_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=1, uri=MID_URI),
                RTCRtpHeaderExtensionParameters(id=3, uri=ABS_SEND_TIME_URI),
            ]
        )
    )
    return extensions_map


@pytest.mark.parametrize("mid", ["0", "video", "a-sixteen-chars!"])
def test_rtp_header_extension_parses_with_aiortc(mid: str) -> None:
    stamp = abs_send_time(12.25)
    block = one_byte_extension_block([(1, mid.encode()), (3, abs_send_time_bytes(stamp))])
    data = (
        rtp_header(
            marker=True,
            payload_type=96,
            sequence=65535,
            timestamp=90000,
            ssrc=0xCAFE,
            extension=block,
        )
        + b"payload"
    )
    packet = RtpPacket.parse(data, _extensions_map())
    assert packet.extensions.mid == mid
    assert packet.extensions.abs_send_time == stamp
    assert packet.payload == b"payload"
    assert packet.sequence_number == 65535


# --- one_byte_extension_block, RFC 8285 §4.2 ---------------------------------------------


def test_one_byte_block_literals() -> None:
    # 4 bytes of elements: no padding.
    assert one_byte_extension_block([(1, b"\x01\x02\x03")]) == bytes.fromhex("bede0001 12010203")
    # |1|L=0|'a' |2|L=1|'bc' = 5 bytes, padded with 3 zero bytes to 2 words.
    assert one_byte_extension_block([(1, b"a"), (2, b"bc")]) == bytes.fromhex(
        "bede0002 10612162 63000000"
    )
    # Data of 16 bytes is L=15.
    assert one_byte_extension_block([(14, bytes(16))]) == bytes.fromhex("bede0005 ef") + bytes(19)
    assert one_byte_extension_block([]) == b""


@pytest.mark.parametrize(
    ("elements", "message"),
    [
        ([(0, b"x")], "id"),
        ([(15, b"x")], "id"),
        ([(1, b"")], "1-16 bytes"),
        ([(1, bytes(17))], "1-16 bytes"),
        ([(1, b"ok"), (16, b"x")], "id"),
    ],
)
def test_one_byte_block_rejects(elements: list[tuple[int, bytes]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        one_byte_extension_block(elements)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), min_size=1))
def test_one_byte_block_matches_aiortc(elements: list[tuple[int, bytes]]) -> None:
    block = one_byte_extension_block(elements)
    profile, value = pack_header_extensions(elements)
    assert profile == 0xBEDE
    assert block == b"\xbe\xde" + (len(value) // 4).to_bytes(2, "big") + value
    assert len(block) % 4 == 0
    assert unpack_header_extensions(0xBEDE, block[4:]) == elements


# --- abs-send-time -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "value"),
    [
        (0.0, 0),
        (0.5, 1 << 17),
        (1.0, 1 << 18),
        (63.0, 63 << 18),
        (64.0, 0),  # 6 integer bits: wraps every 64 s
        (65.25, (1 << 18) + (1 << 16)),
        (1 / (1 << 18), 1),
        (0.4 / (1 << 18), 0),  # rounds to nearest
        (0.6 / (1 << 18), 1),
    ],
)
def test_abs_send_time(seconds: float, value: int) -> None:
    assert abs_send_time(seconds) == value


def test_abs_send_time_bytes() -> None:
    assert abs_send_time_bytes(0x123456) == b"\x12\x34\x56"
    assert abs_send_time_bytes(0) == b"\x00\x00\x00"
    assert abs_send_time_bytes(0xFFFFFF) == b"\xff\xff\xff"


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_abs_send_time_is_24_bits(seconds: float) -> None:
    value = abs_send_time(seconds)
    assert 0 <= value <= 0xFFFFFF
    assert len(abs_send_time_bytes(value)) == 3


# --- RTX, RFC 4588 §4 --------------------------------------------------------------------


def test_rtx_payload_literal() -> None:
    assert rtx_payload(0x1234, b"abc") == b"\x12\x34abc"
    assert rtx_payload(0x1FFFF, b"") == b"\xff\xff"


def test_rtx_payload_unwraps_with_aiortc() -> None:
    rtx = RtpPacket(payload_type=97, sequence_number=7, ssrc=2, payload=rtx_payload(65000, b"x"))
    original = unwrap_rtx(rtx, payload_type=96, ssrc=1)
    assert original.sequence_number == 65000
    assert original.payload == b"x"


# --- serial arithmetic, RFC 3550 App. A.1 / RFC 1982 -------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "diff", "newer"),
    [
        (5, 5, 0, False),
        (6, 5, 1, True),
        (5, 6, -1, False),
        (1, 65535, 2, True),  # across the wrap
        (65535, 1, -2, False),
        (0x7FFF, 0, 32767, True),
        (0x8000, 0, -32768, False),  # exactly half way: newer in neither direction
        (0, 0x8000, -32768, False),
    ],
)
def test_seq_literals(a: int, b: int, diff: int, newer: bool) -> None:
    assert seq_diff(a, b) == diff
    assert seq_newer(a, b) is newer


@settings(max_examples=150, deadline=None)
@given(a=u16, b=u16)
def test_seq_properties(a: int, b: int) -> None:
    d = seq_diff(a, b)
    assert -32768 <= d <= 32767
    assert (b + d) & 0xFFFF == a
    assert seq_newer(a, b) is (d > 0)
    if d != -32768:
        assert seq_diff(b, a) == -d
        assert seq_newer(a, b) is not seq_newer(b, a) or a == b


@settings(max_examples=150, deadline=None)
@given(a=u16, step=st.integers(-32768, 32767))
def test_seq_wraparound(a: int, step: int) -> None:
    later = (a + step) & 0xFFFF
    assert seq_diff(later, a) == step
    assert seq_newer(later, a) is (step > 0)


@pytest.mark.parametrize(
    ("a", "b", "diff", "newer"),
    [
        (0, 0xFFFFFFFF, 1, True),
        (0xFFFFFFFF, 0, -1, False),
        (3000, 0, 3000, True),
        (0x80000000, 0, -(1 << 31), False),
        (0x7FFFFFFF, 0, (1 << 31) - 1, True),
    ],
)
def test_ts_literals(a: int, b: int, diff: int, newer: bool) -> None:
    assert ts_diff(a, b) == diff
    assert ts_newer(a, b) is newer


@settings(max_examples=150, deadline=None)
@given(a=u32, step=st.integers(-(1 << 31), (1 << 31) - 1))
def test_ts_wraparound(a: int, step: int) -> None:
    later = (a + step) & 0xFFFFFFFF
    assert ts_diff(later, a) == step
    assert ts_newer(later, a) is (step > 0)
    if step != -(1 << 31):
        assert ts_diff(a, later) == -step


# --- NTP timestamps, RFC 3550 §4 ---------------------------------------------------------


def test_ntp_literals() -> None:
    assert seconds_to_ntp(1.5) == (1 << 32) | (1 << 31)
    assert ntp_to_seconds((1 << 32) | (1 << 31)) == 1.5
    assert seconds_to_ntp(0.0) == 0
    # 2036-02-07: era 1 starts, the 64-bit value wraps.
    assert seconds_to_ntp(float(1 << 32) + 2.25) == (2 << 32) | (1 << 30)
    assert ntp_middle32(0x0123456789ABCDEF) == 0x456789AB


def test_ntp_matches_aiortc_clock() -> None:
    moment = datetime.datetime(2025, 6, 1, 12, 30, 15, 250000, tzinfo=datetime.UTC)
    seconds = (moment - NTP_EPOCH).total_seconds()
    assert seconds == moment.timestamp() + NTP_UNIX_OFFSET
    assert abs(seconds_to_ntp(seconds) - datetime_to_ntp(moment)) <= 1 << 12  # < 1 µs
    assert ntp_to_seconds(datetime_to_ntp(moment)) == pytest.approx(seconds, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0, max_value=(1 << 32) - 1, allow_nan=False))
def test_ntp_round_trip(seconds: float) -> None:
    ntp = seconds_to_ntp(seconds)
    assert 0 <= ntp < 1 << 64
    assert ntp_to_seconds(ntp) == pytest.approx(seconds, abs=2**-31)
    assert ntp_middle32(ntp) == (ntp >> 16) & 0xFFFFFFFF
