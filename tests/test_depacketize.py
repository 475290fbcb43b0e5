"""Depacketizer: real encoder output through test packetizers, loss and reordering, fuzzing."""

from __future__ import annotations

import fractions
import functools
import random
import re
from collections.abc import Callable, Iterable
from typing import cast

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import broadcast.protocol.depacketize as depacketize
from broadcast.protocol.depacketize import (
    REORDER_WINDOW,
    Depacketizer,
    Frame,
    opus_head,
)

MTU = 300  # small, so that frames span several packets
TS_STEP = 3000  # 90 kHz clock at 30 frames per second

Packet = tuple[int, int, bool, bytes]  # (seq, timestamp, marker, payload)
Encoded = list[tuple[bytes, bool]]  # (frame as the encoder wrote it, keyframe)


def avc_decoder_config(sps: bytes, pps: bytes) -> bytes:
    """AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1) for one SPS and one PPS:
    the decoder extradata these tests give FFmpeg for AVCC frames.

    The High-profile extension fields (chroma format, bit depths) are left out; FFmpeg's
    muxers and decoders do not need them.
    """
    if len(sps) < 4 or len(pps) < 1 or len(sps) > 0xFFFF or len(pps) > 0xFFFF:
        raise ValueError("an SPS of at least 4 bytes and a PPS are needed, each under 64 KiB")
    return (
        # configurationVersion 1, AVCProfileIndication, profile_compatibility,
        # AVCLevelIndication (the SPS bytes after its NAL header), then '111111' and
        # lengthSizeMinusOne = 3, '111' and numOfSequenceParameterSets = 1.
        bytes((1, sps[1], sps[2], sps[3], 0xFF, 0xE1))
        + len(sps).to_bytes(2, "big")
        + sps
        + b"\x01"  # numOfPictureParameterSets
        + len(pps).to_bytes(2, "big")
        + pps
    )


def test_public_surface() -> None:
    assert sorted(depacketize.__all__) == sorted(
        ["REORDER_WINDOW", "Depacketizer", "Frame", "opus_head"]
    )
    for name in depacketize.__all__:
        assert hasattr(depacketize, name)


@pytest.mark.parametrize("codec", ["VP8", "vp9", "av1", "pcmu", "h265", ""])
def test_unknown_codec_is_refused(codec: str) -> None:
    with pytest.raises(ValueError, match="cannot depacketize"):
        Depacketizer(codec)


# --- encoders and packetizers ----------------------------------------------------------------


@functools.cache
def _encode(name: str, count: int = 12) -> tuple[tuple[bytes, bool], ...]:
    """``count`` frames of a still noise picture with a moving square: keyframes are large
    (fragmented), delta frames small (single packets, aggregation)."""
    ctx = cast(av.VideoCodecContext, av.CodecContext.create(name, "w"))
    ctx.width, ctx.height = 128, 96
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.framerate = fractions.Fraction(30)
    ctx.gop_size = 5
    if name == "libx264":
        ctx.max_b_frames = 0
        # Two slices per picture and access unit delimiters: both must be handled.
        ctx.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "x264-params": "keyint=5:min-keyint=5:scenecut=0:slices=2:aud=1",
        }
    else:
        ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    rng = random.Random(5)
    noise = [rng.randbytes(128 * 96), rng.randbytes(64 * 48), rng.randbytes(64 * 48)]
    out: list[tuple[bytes, bool]] = []
    for i in range(count):
        frame = av.VideoFrame(128, 96, "yuv420p")
        luma = bytearray(noise[0])
        for row in range(16):
            start = (8 + row) * 128 + 8 * i
            luma[start : start + 16] = b"\xff" * 16
        for plane, data in zip(frame.planes, [bytes(luma), *noise[1:]], strict=True):
            assert plane.line_size == plane.width  # no padding at these sizes
            plane.update(data)
        frame.pts = i
        out.extend((bytes(p), p.is_keyframe) for p in ctx.encode(frame))
    out.extend((bytes(p), p.is_keyframe) for p in ctx.encode(None))
    assert len(out) == count
    return tuple(out)


def vp8_frames() -> Encoded:
    return list(_encode("libvpx"))


def h264_frames() -> Encoded:
    return list(_encode("libx264"))


def vp8_packetize(frame: bytes, picture_id: int, style: str) -> list[bytes]:
    """RFC 7741 §4.2 payload descriptors: none, a 7-bit PictureID, or a 15-bit PictureID with
    TL0PICIDX and TID."""
    payloads = []
    for offset in range(0, len(frame), MTU - 6):
        start = 0x10 if offset == 0 else 0x00  # S, PID=0
        if style == "bare":
            head = bytes((start,))
        elif style == "pid7":
            head = bytes((0x80 | start, 0x80, picture_id & 0x7F))
        else:
            pid = 0x8000 | picture_id & 0x7FFF
            head = bytes((0x80 | start, 0xE0, pid >> 8, pid & 0xFF, picture_id & 0xFF, 0x40))
        payloads.append(head + frame[offset : offset + MTU - 6])
    return payloads


def annexb_nals(access_unit: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (ITU-T H.264 §B.2), start codes removed."""
    return [nal for nal in re.split(rb"\x00\x00\x00?\x01", access_unit) if nal]


def avcc(access_unit: bytes) -> bytes:
    """ISO/IEC 14496-15 form of an Annex B access unit, access unit delimiters dropped."""
    nals = [nal for nal in annexb_nals(access_unit) if nal[0] & 0x1F != 9]
    return b"".join(len(nal).to_bytes(4, "big") + nal for nal in nals)


def h264_packetize(access_unit: bytes) -> list[bytes]:
    """RFC 6184 non-interleaved mode: FU-A (§5.8) for NAL units over the MTU, a single NAL
    unit packet (§5.6) for each other slice, STAP-A (§5.7.1) for runs of the rest."""
    payloads: list[bytes] = []
    group: list[bytes] = []

    def close_group() -> None:
        if len(group) == 1:
            payloads.append(group[0])
        elif group:
            nri = max(nal[0] & 0x60 for nal in group)
            payloads.append(
                bytes((nri | 24,)) + b"".join(len(n).to_bytes(2, "big") + n for n in group)
            )
        group.clear()

    for nal in annexb_nals(access_unit):
        if len(nal) > MTU:
            close_group()
            body = nal[1:]
            chunks = [body[i : i + MTU - 2] for i in range(0, len(body), MTU - 2)]
            for index, chunk in enumerate(chunks):
                fu_header = nal[0] & 0x1F
                fu_header |= 0x80 if index == 0 else 0
                fu_header |= 0x40 if index == len(chunks) - 1 else 0
                payloads.append(bytes((nal[0] & 0xE0 | 28, fu_header)) + chunk)
        elif nal[0] & 0x1F in (1, 5):
            close_group()
            payloads.append(nal)
        else:
            if 1 + sum(2 + len(n) for n in [*group, nal]) > MTU:
                close_group()
            group.append(nal)
    close_group()
    return payloads


def rtp(
    frame_payloads: Iterable[list[bytes]], seq: int = 1000, ts: int = 0xFFFF_0000
) -> list[Packet]:
    """Sequence numbers, timestamps and marker bits for each frame's payloads."""
    packets = []
    for index, payloads in enumerate(frame_payloads):
        timestamp = (ts + index * TS_STEP) & 0xFFFF_FFFF
        for i, payload in enumerate(payloads):
            packets.append((seq & 0xFFFF, timestamp, i == len(payloads) - 1, payload))
            seq += 1
    return packets


def vp8_packets(style: str = "pid15", seq: int = 1000) -> list[Packet]:
    return rtp((vp8_packetize(data, i, style) for i, (data, _key) in enumerate(vp8_frames())), seq)


def h264_packets(seq: int = 1000) -> list[Packet]:
    return rtp((h264_packetize(data) for data, _key in h264_frames()), seq)


def push_all(depacketizer: Depacketizer, packets: Iterable[Packet]) -> list[Frame]:
    out = []
    for packet in packets:
        out.extend(depacketizer.push(*packet))
    return out + depacketizer.flush()


def expected(codec: str, encoded: Encoded, indexes: Iterable[int]) -> list[Frame]:
    convert = avcc if codec == "h264" else bytes
    return [
        Frame((0xFFFF_0000 + i * TS_STEP) & 0xFFFF_FFFF, convert(encoded[i][0]), encoded[i][1])
        for i in indexes
    ]


def decode(codec: str, frames: list[Frame], extradata: bytes | None = None) -> int:
    """How many pictures FFmpeg's decoder makes of ``frames``; decoding errors raise."""
    ctx = cast(av.VideoCodecContext, av.CodecContext.create(codec, "r"))
    if extradata is not None:
        ctx.extradata = extradata
    pictures = sum(len(ctx.decode(av.Packet(frame.data))) for frame in frames)
    return pictures + len(ctx.decode(None))


def packets_for(codec: str, seq: int = 1000) -> tuple[list[Packet], Encoded]:
    if codec == "vp8":
        return vp8_packets(seq=seq), vp8_frames()
    return h264_packets(seq), h264_frames()


# --- whole streams -------------------------------------------------------------------------


def test_encoders_give_the_expected_shape() -> None:
    for encoded in (vp8_frames(), h264_frames()):
        assert [key for _data, key in encoded] == [i % 5 == 0 for i in range(12)]
    # The H.264 packetizer exercises every packet type the depacketizer reads.
    types = {payload[0] & 0x1F for *_head, payload in h264_packets()}
    assert {24, 28} <= types
    assert types & set(range(1, 24))


@pytest.mark.parametrize("style", ["bare", "pid7", "pid15"])
def test_vp8_frames_are_the_encoders(style: str) -> None:
    depacketizer = Depacketizer("vp8")
    packets = vp8_packets(style)
    assert len(packets) > 3 * len(vp8_frames())  # frames span several packets
    frames = push_all(depacketizer, packets)
    assert frames == expected("vp8", vp8_frames(), range(12))
    assert decode("vp8", frames) == 12
    assert (depacketizer.frames_dropped, depacketizer.need_keyframe) == (0, False)


def test_h264_frames_are_the_encoders_in_avcc() -> None:
    depacketizer = Depacketizer("h264")
    frames = push_all(depacketizer, h264_packets())
    assert frames == expected("h264", h264_frames(), range(12))
    nals = annexb_nals(h264_frames()[0][0])
    assert depacketizer.sps == next(n for n in nals if n[0] & 0x1F == 7)
    assert depacketizer.pps == next(n for n in nals if n[0] & 0x1F == 8)
    assert depacketizer.sps is not None and depacketizer.pps is not None
    extradata = avc_decoder_config(depacketizer.sps, depacketizer.pps)
    assert decode("h264", frames, extradata) == 12
    assert (depacketizer.frames_dropped, depacketizer.need_keyframe) == (0, False)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_reordering_within_the_window_changes_nothing(codec: str) -> None:
    packets, encoded = packets_for(codec)
    rng = random.Random(3)
    # Each packet moves up to 20 places later: far inside the window.
    keyed = sorted(range(len(packets)), key=lambda i: i + rng.uniform(0, 20))
    shuffled = [packets[i] for i in keyed]
    assert shuffled != packets
    depacketizer = Depacketizer(codec)
    assert push_all(depacketizer, shuffled) == expected(codec, encoded, range(12))
    assert depacketizer.frames_dropped == 0


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_sequence_numbers_wrap(codec: str) -> None:
    packets, encoded = packets_for(codec, seq=65530)
    assert any(seq == 0 for seq, *_rest in packets)
    swapped = [*packets[:4], packets[5], packets[4], *packets[6:]]  # reordered across the wrap
    assert push_all(Depacketizer(codec), swapped) == expected(codec, encoded, range(12))


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_duplicates_are_ignored(codec: str) -> None:
    packets, encoded = packets_for(codec)
    doubled = [p for packet in packets for p in (packet, packet)]
    doubled.insert(50, packets[3])  # long after it was released
    depacketizer = Depacketizer(codec)
    assert push_all(depacketizer, doubled) == expected(codec, encoded, range(12))
    assert depacketizer.frames_dropped == 0


@pytest.mark.parametrize("jump", [20000, -20000])
def test_sequence_number_jumps_are_followed(jump: int) -> None:
    """A sender that renumbers its packets is followed after a window's worth of them."""
    encoded = vp8_frames()
    payloads = [vp8_packetize(data, i, "pid15") for i, (data, _key) in enumerate(encoded)]
    before = rtp(payloads[:5])
    after = rtp(payloads, seq=before[-1][0] + 1 + jump, ts=before[-1][1] + TS_STEP)
    depacketizer = Depacketizer("vp8")
    frames = push_all(depacketizer, before + after)
    assert frames[:5] == expected("vp8", encoded, range(5))
    assert depacketizer.need_keyframe
    # Forwards, the packets behind the jump are held, then the gap is given up: nothing more
    # is lost. Backwards, a window's worth of packets is taken for late ones first.
    survivors = range(12) if jump > 0 else range(10, 12)
    assert [(f.data, f.keyframe) for f in frames[5:]] == [encoded[i] for i in survivors]


def _frame_of(packets: list[Packet], index: int) -> list[int]:
    """Indexes into ``packets`` of the packets of frame ``index``."""
    ts = (0xFFFF_0000 + index * TS_STEP) & 0xFFFF_FFFF
    return [i for i, packet in enumerate(packets) if packet[1] == ts]


@pytest.mark.parametrize("codec", ["vp8", "h264"])
@pytest.mark.parametrize(("frame", "which"), [(1, 0), (2, -1), (5, 1), (5, -1)])
def test_a_lost_packet_drops_frames_until_the_next_keyframe(
    codec: str, frame: int, which: int
) -> None:
    packets, encoded = packets_for(codec)
    lost = _frame_of(packets, frame)[which]
    depacketizer = Depacketizer(codec)
    frames = push_all(depacketizer, packets[:lost] + packets[lost + 1 :])
    next_key = (frame // 5 + 1) * 5
    survivors = [*range(frame), *range(next_key, 12)]
    assert frames == expected(codec, encoded, survivors)
    assert depacketizer.need_keyframe
    # A frame lost whole leaves no trace to count.
    lost_whole = len(_frame_of(packets, frame)) == 1
    assert depacketizer.frames_dropped == next_key - frame - lost_whole
    extradata = None
    if codec == "h264":
        assert depacketizer.sps is not None and depacketizer.pps is not None
        extradata = avc_decoder_config(depacketizer.sps, depacketizer.pps)
    assert decode(codec, frames, extradata) == len(survivors)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_a_gap_is_given_up_after_the_window(codec: str) -> None:
    packets, encoded = packets_for(codec)
    lost = _frame_of(packets, 4)[0]
    depacketizer = Depacketizer(codec)
    out = []
    for packet in packets[:lost]:
        out.extend(depacketizer.push(*packet))
    assert out == expected(codec, encoded, range(4))
    after = packets[lost + 1 :]
    assert len(after) > REORDER_WINDOW + 1
    for packet in after[:REORDER_WINDOW]:
        assert depacketizer.push(*packet) == []  # held behind the gap
    assert not depacketizer.need_keyframe
    out = []
    for packet in after[REORDER_WINDOW:]:
        out.extend(depacketizer.push(*packet))
    assert depacketizer.need_keyframe
    assert out == expected(codec, encoded, range(5, 12))
    # The lost packet, retransmitted too late, changes nothing.
    assert depacketizer.push(*packets[lost]) == []
    assert depacketizer.flush() == []


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_joining_mid_stream_waits_for_a_keyframe_quietly(codec: str) -> None:
    packets, encoded = packets_for(codec)
    start = _frame_of(packets, 0)[1]  # the middle of the first keyframe
    depacketizer = Depacketizer(codec)
    assert push_all(depacketizer, packets[start:]) == expected(codec, encoded, range(5, 12))
    assert (depacketizer.frames_dropped, depacketizer.need_keyframe) == (0, False)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_a_frame_ends_where_the_timestamp_moves_without_a_marker(codec: str) -> None:
    packets, encoded = packets_for(codec)
    unmarked = [(seq, ts, False, payload) for seq, ts, _marker, payload in packets]
    depacketizer = Depacketizer(codec)
    out = []
    for packet in unmarked:
        out.extend(depacketizer.push(*packet))
    assert out == expected(codec, encoded, range(11))
    # The last frame never ended: the end of the stream cannot vouch for it.
    assert depacketizer.flush() == []
    assert depacketizer.frames_dropped == 1


def test_h264_keyframe_after_a_loss_needs_its_first_slice() -> None:
    packets, encoded = packets_for("h264")
    keyframe = _frame_of(packets, 5)
    first_slice_end = next(
        i for i in keyframe if packets[i][3][0] & 0x1F == 28 and packets[i][3][1] == 0x45
    )
    # Frame 4 and the keyframe's first slice are lost: what is left of the keyframe is whole
    # NAL units, but its picture is not.
    lost = set(_frame_of(packets, 4)) | set(range(keyframe[0], first_slice_end + 1))
    rest = [p for i, p in enumerate(packets) if i not in lost]
    depacketizer = Depacketizer("h264")
    frames = push_all(depacketizer, rest)
    assert frames == expected("h264", encoded, [0, 1, 2, 3, 10, 11])
    assert depacketizer.frames_dropped == 5  # frames 5-9; frame 4 vanished whole
    assert depacketizer.need_keyframe


def _renumber(packets: list[Packet]) -> list[Packet]:
    return [
        (1000 + i, ts, marker, payload) for i, (_seq, ts, marker, payload) in enumerate(packets)
    ]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p[:2], id="truncated"),
        pytest.param(lambda p: b"", id="empty"),
        pytest.param(lambda p: bytes((p[0] & ~0x10,)) + p[1:], id="vp8-no-start"),
        pytest.param(lambda p: bytes((p[0] | 0x07,)) + p[1:], id="vp8-partition-7"),
    ],
)
def test_vp8_damaged_first_packet_drops_the_frame(damage: Callable[[bytes], bytes]) -> None:
    packets = vp8_packets()
    first = _frame_of(packets, 2)[0]
    seq, ts, marker, payload = packets[first]
    packets[first] = (seq, ts, marker, damage(payload))
    depacketizer = Depacketizer("vp8")
    assert push_all(depacketizer, packets) == expected("vp8", vp8_frames(), [0, 1, *range(5, 12)])
    assert depacketizer.need_keyframe
    assert depacketizer.frames_dropped == 3


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: b"\x7d" + p[1:], id="fu-b"),  # type 29
        pytest.param(lambda p: b"\x79" + p[1:], id="stap-b"),  # type 25
        pytest.param(lambda p: b"\x7a" + p[1:], id="mtap16"),  # type 26
        pytest.param(lambda p: b"\x60" + p[1:], id="type-0"),
        pytest.param(lambda p: p[:1], id="fu-a-header-only"),
        pytest.param(lambda p: p[:1] + bytes((p[1] & 0x3F,)) + p[2:], id="fu-a-no-start"),
        pytest.param(lambda p: p[:1] + bytes((p[1] & 0x1F | 0xC0,)) + p[2:], id="fu-a-end-early"),
    ],
)
def test_h264_damaged_fragment_drops_the_frame(damage: Callable[[bytes], bytes]) -> None:
    packets = h264_packets()
    fu_a = [i for i in _frame_of(packets, 5) if packets[i][3][0] & 0x1F == 28]
    seq, ts, marker, payload = packets[fu_a[0]]
    packets[fu_a[0]] = (seq, ts, marker, damage(payload))
    depacketizer = Depacketizer("h264")
    survivors = [0, 1, 2, 3, 4, 10, 11]
    assert push_all(depacketizer, packets) == expected("h264", h264_frames(), survivors)
    assert depacketizer.need_keyframe
    assert depacketizer.frames_dropped == 5


def test_h264_fu_a_missing_a_middle_fragment_is_dropped_even_without_a_gap() -> None:
    packets = h264_packets()
    keyframe = _frame_of(packets, 0)
    fu_a = [i for i in keyframe if packets[i][3][0] & 0x1F == 28 and not packets[i][3][1] & 0x80]
    # A sender bug, not a loss: the sequence numbers run on.
    packets = _renumber(packets[: fu_a[0]] + packets[fu_a[0] + 1 :])
    depacketizer = Depacketizer("h264")
    assert push_all(depacketizer, packets) == expected("h264", h264_frames(), range(5, 12))
    # The stream began with the damage: still the wait for the first keyframe.
    assert (depacketizer.frames_dropped, depacketizer.need_keyframe) == (0, False)


def test_h264_stap_a_sizes_are_checked() -> None:
    sps, pps = bytes.fromhex("6742c01f"), bytes.fromhex("68ce3c80")
    idr = bytes.fromhex("65888400")
    good = b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in (sps, pps, idr))
    depacketizer = Depacketizer("h264")
    assert depacketizer.push(1, 90, True, good) == [
        Frame(90, b"".join(len(n).to_bytes(4, "big") + n for n in (sps, pps, idr)), True)
    ]
    for bad in (good[:-1], good + b"\x00", good[:3] + b"\x00\x00" + good[5:], b"\x78\x00"):
        depacketizer = Depacketizer("h264")
        depacketizer.push(1, 90, True, good)
        assert depacketizer.push(2, 180, True, bad) == []
        assert (depacketizer.frames_dropped, depacketizer.need_keyframe) == (1, True)


# --- Opus ----------------------------------------------------------------------------------


def test_opus_packets_are_frames() -> None:
    payloads = [bytes((0x78, i)) * (i + 1) for i in range(100)]  # TOC 0x78: CELT FB 20 ms
    packets = [(65500 + i & 0xFFFF, 960 * i, i == 0, p) for i, p in enumerate(payloads)]
    lost = {7, 40}
    arrival = [p for i, p in enumerate(packets) if i not in lost]
    arrival[10], arrival[12] = arrival[12], arrival[10]
    arrival.insert(30, arrival[20])  # a duplicate
    depacketizer = Depacketizer("opus")
    frames = push_all(depacketizer, arrival)
    kept = [i for i in range(100) if i not in lost]
    assert frames == [Frame(960 * i, payloads[i], True) for i in kept]
    assert (depacketizer.frames_dropped, depacketizer.need_keyframe) == (0, False)
    assert depacketizer.push(65500 + 7 & 0xFFFF, 960 * 7, False, payloads[7]) == []


def test_opus_empty_payload_is_dropped() -> None:
    depacketizer = Depacketizer("opus")
    assert depacketizer.push(1, 0, False, b"") == []
    assert depacketizer.push(2, 960, False, b"\x78\x01") == [Frame(960, b"\x78\x01", True)]
    assert depacketizer.frames_dropped == 1


# --- codec configuration -------------------------------------------------------------------


def test_opus_head_literal() -> None:
    head = opus_head()
    assert len(head) == 19
    assert head == b"OpusHead" + bytes.fromhex("01 02 3801 80bb0000 0000 00")
    mono = opus_head(channels=1, pre_skip=0, sample_rate=16000)
    assert (mono[9], mono[10:12], mono[12:16]) == (1, b"\0\0", (16000).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="1 or 2"):
        opus_head(channels=6)


# --- properties ----------------------------------------------------------------------------

_packet = st.tuples(
    st.integers(0, 0xFFFF) | st.integers(990, 1010),
    st.sampled_from([0, 3000, 6000]) | st.integers(0, 0xFFFF_FFFF),
    st.booleans(),
    st.binary(max_size=24)
    | st.sampled_from([b"\x7c\x85\x00", b"\x7c\x45\x00", b"\x78\x00\x02\x67\x42", b"\x10\x00"]),
)


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(["vp8", "h264", "opus"]), packets=st.lists(_packet, max_size=200))
def test_arbitrary_packets_never_raise(codec: str, packets: list[Packet]) -> None:
    depacketizer = Depacketizer(codec)
    stamps = {ts for _seq, ts, _marker, _payload in packets}
    frames = push_all(depacketizer, packets)
    for frame in frames:
        assert frame.timestamp in stamps
        assert frame.data
        assert codec != "opus" or frame.keyframe
    assert depacketizer.frames_dropped >= 0
    assert depacketizer._held == {}  # flushed
