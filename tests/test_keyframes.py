"""Keyframe / frame-start detection: hand-built payloads, real encoder output, fuzzing."""

from __future__ import annotations

import fractions
import random

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

import broadcast.protocol.keyframes as keyframes
from broadcast.protocol.keyframes import is_frame_start, is_keyframe_start

CODECS = ["h264", "vp8", "vp9", "av1"]


def test_public_surface() -> None:
    assert sorted(keyframes.__all__) == ["is_frame_start", "is_keyframe_start"]
    for name in keyframes.__all__:
        assert callable(getattr(keyframes, name))


# --- H.264, RFC 6184 -----------------------------------------------------------------------

SPS = bytes.fromhex("6742c01f")  # NAL header 0x67: NRI=3, type 7
PPS = bytes.fromhex("68ce3c80")  # type 8
SEI = bytes.fromhex("0605ff")  # type 6
IDR = bytes.fromhex("658884")  # type 5; first_mb_in_slice=0
NON_IDR = bytes.fromhex("419a")  # type 1


def stap_a(*nalus: bytes) -> bytes:
    # RFC 6184 §5.7.1: STAP-A NAL header (F=0, NRI=3, type 24), then size-prefixed NAL units.
    return b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in nalus)


H264_CASES = [
    # (payload, keyframe start, frame start)
    pytest.param(IDR, True, True, id="single-idr"),
    pytest.param(SPS, True, True, id="single-sps"),
    pytest.param(PPS, False, True, id="single-pps"),
    pytest.param(SEI, False, True, id="single-sei"),
    pytest.param(NON_IDR, False, True, id="single-non-idr"),
    pytest.param(b"\x65", False, True, id="bare-idr-header"),
    # first_mb_in_slice != 0: a later slice of an IDR picture, no place to start.
    pytest.param(b"\x65\x40\x00", False, True, id="idr-second-slice"),
    pytest.param(b"\x7c\x85\x40\x00", False, True, id="fu-a-idr-second-slice"),
    pytest.param(stap_a(SPS, PPS), True, True, id="stap-a-sps-pps"),
    pytest.param(stap_a(SPS, PPS, IDR), True, True, id="stap-a-sps-pps-idr"),
    pytest.param(stap_a(PPS, IDR), True, True, id="stap-a-idr-second"),
    pytest.param(stap_a(SEI, PPS), False, True, id="stap-a-no-key"),
    pytest.param(stap_a(NON_IDR, NON_IDR), False, True, id="stap-a-delta"),
    # SPS size field claims 16 bytes, only 4 follow: malformed.
    pytest.param(b"\x78\x00\x10" + SPS, False, True, id="stap-a-truncated"),
    # A zero-size unit cannot be skipped meaningfully (RFC 6184 §5.7.1 forbids it).
    pytest.param(b"\x78\x00\x00" + b"\x00\x04" + SPS, False, True, id="stap-a-zero-size"),
    pytest.param(b"\x78\x00", False, True, id="stap-a-header-only"),
    # FU-A (RFC 6184 §5.8): indicator 0x7c (NRI=3, type 28), FU header |S|E|R|type|.
    pytest.param(b"\x7c\x85\x88\x84", True, True, id="fu-a-idr-start"),
    pytest.param(b"\x7c\x05\x11\x22", False, False, id="fu-a-idr-middle"),
    pytest.param(b"\x7c\x45\x11\x22", False, False, id="fu-a-idr-end"),
    pytest.param(b"\x5c\x81\x9a\x00", False, True, id="fu-a-non-idr-start"),
    pytest.param(b"\x5c\x01\x9a\x00", False, False, id="fu-a-non-idr-middle"),
    pytest.param(b"\x7c", False, False, id="fu-a-no-fu-header"),
    pytest.param(b"", False, False, id="empty"),
    pytest.param(b"\x00\x00", False, False, id="type-0-reserved"),
    pytest.param(b"\x7d\x85\x00\x00", False, False, id="fu-b-interleaved-only"),
]


@pytest.mark.parametrize(("payload", "keyframe", "frame"), H264_CASES)
def test_h264(payload: bytes, keyframe: bool, frame: bool) -> None:
    assert is_keyframe_start("h264", payload) is keyframe
    assert is_frame_start("h264", payload) is frame


# --- VP8, RFC 7741 -------------------------------------------------------------------------

# RFC 7741 §4.3 payload header of a key frame: |Size0=2|H=1|VER=0|P=0|, then start code.
VP8_KEY = bytes.fromhex("5002009d012a")
VP8_DELTA = bytes.fromhex("5102008c")  # P=1

VP8_CASES = [
    pytest.param(b"\x10" + VP8_KEY, True, True, id="minimal-key"),
    pytest.param(b"\x10" + VP8_DELTA, False, True, id="minimal-delta"),
    pytest.param(b"\x30" + VP8_KEY, True, True, id="non-reference-bit"),
    pytest.param(b"\x00" + VP8_KEY, False, False, id="not-start"),
    pytest.param(b"\x11" + VP8_KEY, False, False, id="start-of-partition-1"),
    # X=1, I=1 with a 7-bit PictureID 0x01.
    pytest.param(b"\x90\x80\x01" + VP8_KEY, True, True, id="7-bit-picture-id"),
    # X=1, I=1, M=1: 15-bit PictureID 0x0101.
    pytest.param(b"\x90\x80\x81\x01" + VP8_KEY, True, True, id="15-bit-picture-id"),
    pytest.param(b"\x90\x80\x81\x01" + VP8_DELTA, False, True, id="15-bit-picture-id-delta"),
    # X=1, I L T K: PictureID 0x0101, TL0PICIDX 0x03, |TID=0|Y=1|KEYIDX=1|. Every
    # descriptor byte has bit 0 set, so reading the P bit from the wrong offset answers False.
    pytest.param(b"\x90\xf0\x81\x01\x03\x21" + VP8_KEY, True, True, id="all-extensions"),
    pytest.param(b"\x90\x70\x03\x21" + VP8_KEY, True, True, id="l-t-k-without-picture-id"),
    pytest.param(b"\x90\x10\x21" + VP8_KEY, True, True, id="k-only"),
    pytest.param(b"\x10", False, True, id="descriptor-only"),
    pytest.param(b"\x90", False, True, id="truncated-extension-byte"),
    pytest.param(b"\x90\x80", False, True, id="truncated-picture-id"),
    pytest.param(b"\x90\x80\x81\x01", False, True, id="truncated-before-payload-header"),
    pytest.param(b"\x90\xf0\x81\x01\x03", False, True, id="truncated-t-k"),
    pytest.param(b"", False, False, id="empty"),
]


@pytest.mark.parametrize(("payload", "keyframe", "frame"), VP8_CASES)
def test_vp8(payload: bytes, keyframe: bool, frame: bool) -> None:
    assert is_keyframe_start("vp8", payload) is keyframe
    assert is_frame_start("vp8", payload) is frame


# --- VP9, RFC 9628 -------------------------------------------------------------------------

# Uncompressed header of a key frame (frame_marker, profile 0, frame_type 0) + sync code.
VP9_KEY = bytes.fromhex("82498342")

VP9_CASES = [
    # |I|P|L|F|B|E|V|Z| = B only.
    pytest.param(b"\x08" + VP9_KEY, True, True, id="minimal-key"),
    pytest.param(b"\x48", False, True, id="minimal-inter"),
    pytest.param(b"\x04", False, False, id="end-only"),
    pytest.param(b"\x0c" + VP9_KEY, True, True, id="single-packet-frame"),
    # Non-flexible, as Chrome sends it: I, L, B, V; PictureID 0x0101 (M=1); layer byte
    # |TID=0|U=0|SID=0|D=0|; TL0PICIDX; scalability structure follows.
    pytest.param(b"\xaa\x81\x01\x00\x00\x18", True, True, id="non-flexible-sid0"),
    pytest.param(b"\xea\x81\x01\x00\x00", False, True, id="non-flexible-inter"),
    pytest.param(b"\xa8\x81\x01\x02\x00", False, True, id="non-flexible-sid1"),
    pytest.param(b"\xa0\x81\x01\x02\x00", False, False, id="non-flexible-continuation"),
    # Flexible mode (F=1), 7-bit PictureID 0x0e: read as a layer byte it would say SID=7.
    pytest.param(b"\xb8\x0e\x00", True, True, id="flexible-7-bit-picture-id"),
    pytest.param(b"\xb8\x0e\x0e", False, True, id="flexible-sid7"),
    # L without I: the layer byte comes first. TID=2 does not matter.
    pytest.param(b"\x28\x40", True, True, id="layer-byte-tid2-sid0"),
    pytest.param(b"\xa8", False, True, id="truncated-picture-id"),
    pytest.param(b"\xa8\x81", False, True, id="truncated-long-picture-id"),
    pytest.param(b"\xa8\x81\x01", False, True, id="truncated-layer-byte"),
    pytest.param(b"", False, False, id="empty"),
]


@pytest.mark.parametrize(("payload", "keyframe", "frame"), VP9_CASES)
def test_vp9(payload: bytes, keyframe: bool, frame: bool) -> None:
    assert is_keyframe_start("vp9", payload) is keyframe
    assert is_frame_start("vp9", payload) is frame


# --- AV1, AV1 RTP spec §4.4 ----------------------------------------------------------------

AV1_CASES = [
    # |Z|Y|W|N|-|-|-|: W=1, N=1, then a sequence header OBU header (type 1).
    pytest.param(b"\x18\x08", True, True, id="new-coded-video-sequence"),
    pytest.param(b"\x58\x08", True, True, id="new-sequence-continues-in-next"),
    pytest.param(b"\x10\x30", False, True, id="frame-obu"),
    pytest.param(b"\x90\x00", False, False, id="continuation"),
    pytest.param(b"\x98\x00", False, False, id="continuation-with-n-contradiction"),
    pytest.param(b"", False, False, id="empty"),
]


@pytest.mark.parametrize(("payload", "keyframe", "frame"), AV1_CASES)
def test_av1(payload: bytes, keyframe: bool, frame: bool) -> None:
    assert is_keyframe_start("av1", payload) is keyframe
    assert is_frame_start("av1", payload) is frame


@pytest.mark.parametrize("codec", ["opus", "pcmu", "VP8", "video/vp8", ""])
def test_unknown_codec_is_never_a_start(codec: str) -> None:
    assert is_keyframe_start(codec, b"\x10" + VP8_KEY) is False
    assert is_frame_start(codec, b"\x10" + VP8_KEY) is False


# --- real encoder output (aiortc's packetizers) --------------------------------------------


def _frames(count: int) -> list[av.VideoFrame]:
    rng = random.Random(7)
    frames = []
    for i in range(count):
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane in frame.planes:
            plane.update(rng.randbytes(plane.buffer_size))
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        frames.append(frame)
    return frames


@pytest.mark.parametrize(("codec", "encoder_class"), [("vp8", Vp8Encoder), ("h264", H264Encoder)])
def test_real_encoder_packets(codec: str, encoder_class: type[Vp8Encoder | H264Encoder]) -> None:
    encoder = encoder_class()
    forced = {0, 2}
    for index, frame in enumerate(_frames(4)):
        payloads, _timestamp = encoder.encode(frame, force_keyframe=index in forced)
        assert len(payloads) > 1  # noise at this size needs fragmentation
        assert is_frame_start(codec, payloads[0])
        if index in forced:
            assert is_keyframe_start(codec, payloads[0])
        else:
            assert not any(is_keyframe_start(codec, p) for p in payloads)
        if codec == "vp8":
            # One partition per frame: only the first packet is a start.
            assert not any(is_frame_start(codec, p) for p in payloads[1:])
            assert not any(is_keyframe_start(codec, p) for p in payloads[1:])


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(CODECS), payload=st.binary(max_size=48))
def test_garbage_never_raises(codec: str, payload: bytes) -> None:
    keyframe = is_keyframe_start(codec, payload)
    frame = is_frame_start(codec, payload)
    assert isinstance(keyframe, bool)
    assert isinstance(frame, bool)
    # A decoder can only start a keyframe where a frame starts.
    assert frame or not keyframe


@settings(max_examples=100, deadline=None)
@given(
    start=st.booleans(),
    partition_id=st.integers(0, 7),
    picture_id=st.none() | st.integers(0, 0x7FFF),
    tl0picidx=st.none() | st.integers(0, 255),
    tid=st.none() | st.tuples(st.integers(0, 3), st.integers(0, 1)),
    keyidx=st.none() | st.integers(0, 31),
    header=st.integers(0, 255),
)
def test_vp8_descriptor_layouts_match_aiortc(
    start: bool,
    partition_id: int,
    picture_id: int | None,
    tl0picidx: int | None,
    tid: tuple[int, int] | None,
    keyidx: int | None,
    header: int,
) -> None:
    descriptor = VpxPayloadDescriptor(
        partition_start=int(start),
        partition_id=partition_id,
        picture_id=picture_id,
        tl0picidx=tl0picidx,
        tid=tid,
        keyidx=keyidx,
    )
    payload = bytes(descriptor) + bytes([header]) + b"\x00\x00"
    first = start and partition_id == 0
    assert is_frame_start("vp8", payload) is first
    assert is_keyframe_start("vp8", payload) is (first and not header & 1)
