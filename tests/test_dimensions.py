"""Keyframe dimensions: real encoder output, hand-built headers for rare branches, fuzzing."""

from __future__ import annotations

import fractions

import av
import pytest
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

import broadcast.protocol.dimensions as dimensions
from broadcast.protocol.dimensions import keyframe_dimensions
from broadcast.protocol.keyframes import is_keyframe_start

CODECS = ["h264", "vp8", "vp9", "av1"]
SIZES = [(640, 360), (1280, 720), (642, 362)]


def test_public_surface() -> None:
    assert dimensions.__all__ == ["keyframe_dimensions"]


class BitWriter:
    """MSB-first bit writer with H.264 Exp-Golomb codes, for hand-built headers."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> BitWriter:
        self.bits += [value >> (n - 1 - i) & 1 for i in range(n)]
        return self

    def ue(self, value: int) -> BitWriter:
        code = value + 1
        return self.u(code.bit_length() - 1, 0).u(code.bit_length(), code)

    def se(self, value: int) -> BitWriter:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def bytes(self) -> bytes:
        bits = self.bits + [1] + [0] * (-(len(self.bits) + 1) % 8)  # rbsp trailing bits
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def _frame(width: int, height: int, pix_fmt: str = "yuv420p", shade: int = 0) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane in frame.planes:
        plane.update(bytes([shade]) * plane.buffer_size)
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def _encode(name: str, frame: av.VideoFrame, options: dict[str, str]) -> bytes:
    """The first packet PyAV's ``name`` encoder makes of ``frame``."""
    context = av.CodecContext.create(name, "w")
    context.width, context.height, context.pix_fmt = frame.width, frame.height, frame.format.name
    context.time_base = fractions.Fraction(1, 30)
    context.framerate = 30
    context.options = options
    frame.time_base = context.time_base
    return bytes([*context.encode(frame), *context.encode(None)][0])


# --- aiortc's encoders and packetizers (VP8, H.264 baseline) ---------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("codec", "encoder_class"), [("vp8", Vp8Encoder), ("h264", H264Encoder)])
def test_aiortc_encoders(
    codec: str, encoder_class: type[Vp8Encoder | H264Encoder], size: tuple[int, int]
) -> None:
    encoder = encoder_class()
    key, _ = encoder.encode(_frame(*size), force_keyframe=True)
    assert is_keyframe_start(codec, key[0])
    assert keyframe_dimensions(codec, key[0]) == size
    assert all(keyframe_dimensions(codec, p) is None for p in key[1:])
    delta, _ = encoder.encode(_frame(*size, shade=60), force_keyframe=False)
    assert all(keyframe_dimensions(codec, p) is None for p in delta)


# --- H.264, RFC 6184 / ITU-T H.264 §7.3.2.1.1 ----------------------------------------------


def _annex_b_nal_units(stream: bytes) -> list[bytes]:
    return [n.strip(b"\x00") for n in stream.split(b"\x00\x00\x01") if n.strip(b"\x00")]


def _x264_sps(frame: av.VideoFrame, options: dict[str, str]) -> bytes:
    units = _annex_b_nal_units(_encode("libx264", frame, {"preset": "ultrafast", **options}))
    return next(n for n in units if n[0] & 0x1F == 7)


X264_CASES = [
    # High 4:4:4 Predictive (profile 244): crop unit 1x1.
    pytest.param("yuv444p", 641, 359, {}, id="high444-odd"),
    # A custom quantizer matrix makes it High (100); x264 puts the matrices in the PPS, so
    # SPS scaling lists are covered by hand-built SPSs below.
    pytest.param("yuv420p", 642, 362, {"x264-params": "cqm=jvt"}, id="high"),
    # High 4:2:2: crop unit 2x1.
    pytest.param("yuv422p", 642, 361, {}, id="high422"),
    # Interlaced: frame_mbs_only_flag=0, map units are field macroblock pairs.
    pytest.param("yuv420p", 640, 360, {"x264-params": "interlaced=1"}, id="interlaced"),
    pytest.param("yuv420p", 1920, 1080, {"x264-params": "bframes=2"}, id="1080p-poc-type-0"),
]


@pytest.mark.parametrize(("pix_fmt", "width", "height", "options"), X264_CASES)
def test_x264_sps(pix_fmt: str, width: int, height: int, options: dict[str, str]) -> None:
    sps = _x264_sps(_frame(width, height, pix_fmt), options)
    pps = bytes.fromhex("68ce3c80")
    single = sps
    stap_a = b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in (sps, pps))
    fu_a_start = bytes([sps[0] & 0xE0 | 28, 0x80 | 7]) + sps[1:]
    for payload in (single, stap_a, fu_a_start):
        assert is_keyframe_start("h264", payload)
        assert keyframe_dimensions("h264", payload) == (width, height)
    # A first fragment cut before the size fields, an end fragment, a lone PPS.
    assert keyframe_dimensions("h264", fu_a_start[:6]) is None
    assert keyframe_dimensions("h264", bytes([0x7C, 0x47]) + sps[1:]) is None
    assert keyframe_dimensions("h264", pps) is None


def _sps(
    *,
    profile: int = 66,
    chroma: int = 1,
    separate_planes: int = 0,
    scaling: list[list[int] | None] | None = None,
    poc_type: int = 0,
    poc_cycle: list[int] | None = None,
    width_mbs: int = 40,
    height_map_units: int = 23,
    frame_mbs_only: int = 1,
    crop: tuple[int, int, int, int] | None = None,
) -> bytes:
    """An SPS NAL unit (header 0x67), with emulation prevention applied."""
    w = BitWriter().u(8, profile).u(8, 0).u(8, 31).ue(0)
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        w.ue(chroma)
        if chroma == 3:
            w.u(1, separate_planes)
        w.ue(0).ue(0).u(1, 0).u(1, scaling is not None)
        for deltas in scaling or []:
            w.u(1, deltas is not None)
            for delta in deltas or []:
                w.se(delta)
    w.ue(0).ue(poc_type)
    if poc_type == 0:
        w.ue(4)
    elif poc_type == 1:
        w.u(1, 0).se(-1).se(2).ue(len(poc_cycle or []))
        for offset in poc_cycle or []:
            w.se(offset)
    w.ue(1).u(1, 0).ue(width_mbs - 1).ue(height_map_units - 1).u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, 1)
    w.u(1, 1).u(1, crop is not None)
    for value in crop or ():
        w.ue(value)
    w.u(1, 0)  # vui_parameters_present_flag
    rbsp = w.bytes()
    ebsp = bytearray()
    for byte in rbsp:
        if len(ebsp) >= 2 and ebsp[-2:] == b"\x00\x00" and byte <= 3:
            ebsp.append(3)
        ebsp.append(byte)
    return b"\x67" + bytes(ebsp)


EPB_SPS = _sps(poc_type=1, poc_cycle=[1 << 28, -(1 << 28)])

H264_HAND_CASES = [
    pytest.param(_sps(), (640, 368), id="baseline-no-crop"),
    pytest.param(_sps(crop=(0, 0, 0, 4)), (640, 360), id="baseline-crop"),
    pytest.param(_sps(poc_type=1, poc_cycle=[1, -2, 300]), (640, 368), id="poc-type-1"),
    pytest.param(_sps(poc_type=2, crop=(1, 2, 3, 4)), (634, 354), id="poc-type-2-crop-all"),
    pytest.param(_sps(profile=100, chroma=0, crop=(1, 1, 1, 1)), (638, 366), id="monochrome"),
    # Separate colour planes: ChromaArrayType 0, crop unit 1x1 despite 4:4:4.
    pytest.param(
        _sps(profile=244, chroma=3, separate_planes=1, crop=(0, 3, 0, 5)),
        (637, 363),
        id="separate-colour-planes",
    ),
    # Scaling lists: a full list, one ending early (next_scale 0), a default-matrix flag.
    pytest.param(
        _sps(profile=100, scaling=[[1] * 16, [0, 0, -8], None, [-8], None, None, None, [2] * 64]),
        (640, 368),
        id="scaling-lists",
    ),
    # Field coding: 4:2:0 crop unit is 2x4.
    pytest.param(
        _sps(height_map_units=12, frame_mbs_only=0, crop=(0, 0, 0, 6)),
        (640, 360),
        id="field-crop",
    ),
    # Long zero runs in the RBSP force emulation prevention bytes into the NAL unit.
    pytest.param(EPB_SPS, (640, 368), id="emulation-prevention"),
]


@pytest.mark.parametrize(("sps", "size"), H264_HAND_CASES)
def test_h264_hand_built_sps(sps: bytes, size: tuple[int, int]) -> None:
    assert keyframe_dimensions("h264", sps) == size


def test_h264_emulation_prevention_is_removed() -> None:
    assert b"\x00\x00\x03" in EPB_SPS


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_sps(width_mbs=5000), id="too-wide"),
        pytest.param(_sps(crop=(0, 0, 0, 200)), id="cropped-to-nothing"),
        pytest.param(_sps(poc_type=3), id="bad-poc-type"),
        pytest.param(_sps(profile=100, chroma=4), id="bad-chroma-format"),
        pytest.param(b"\x67\x42\xc0\x1f" + b"\x00" * 8, id="endless-ue"),
        pytest.param(b"\x67\x42\xc0", id="truncated"),
        pytest.param(b"\x78\x00\x10" + _sps(), id="stap-a-truncated"),
        pytest.param(b"\x78\x00\x04\x68\xce\x3c\x80", id="stap-a-pps-only"),
        pytest.param(bytes.fromhex("658884"), id="idr-slice"),
        pytest.param(b"\x7c\x85\x88\x84", id="fu-a-idr"),
        pytest.param(b"", id="empty"),
    ],
)
def test_h264_no_size(payload: bytes) -> None:
    assert keyframe_dimensions("h264", payload) is None


# --- VP8, RFC 7741 / RFC 6386 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "size"),
    [
        # Frame tag (key frame), start code, 14-bit sizes with the scale bits set.
        pytest.param(b"\x10" + bytes.fromhex("5002009d012a80c2d040"), (640, 208), id="scale"),
        pytest.param(b"\x90\xf0\x81\x01\x03\x21" + bytes.fromhex("5002009d012a10000900"), (16, 9)),
        pytest.param(b"\x10" + bytes.fromhex("5002009d012a00000900"), None, id="zero-width"),
        pytest.param(b"\x10" + bytes.fromhex("5002009d012b10000900"), None, id="bad-start-code"),
        pytest.param(b"\x10" + bytes.fromhex("5102009d012a10000900"), None, id="inter-frame"),
        pytest.param(b"\x11" + bytes.fromhex("5002009d012a10000900"), None, id="partition-1"),
        pytest.param(b"\x10" + bytes.fromhex("5002009d012a1000"), None, id="truncated"),
    ],
)
def test_vp8_hand_built(payload: bytes, size: tuple[int, int] | None) -> None:
    assert keyframe_dimensions("vp8", payload) == size


# --- VP9, RFC 9628 / VP9 bitstream §6.2 ----------------------------------------------------

VP9_OPTIONS = {"deadline": "realtime", "cpu-used": "8"}


@pytest.mark.parametrize(
    ("pix_fmt", "size"),
    [
        pytest.param("yuv420p", (640, 360), id="profile0"),
        pytest.param("yuv420p", (642, 362), id="profile0-odd"),
        pytest.param("yuv444p", (641, 361), id="profile1"),
    ],
)
def test_vp9_libvpx(pix_fmt: str, size: tuple[int, int]) -> None:
    bitstream = _encode("libvpx-vp9", _frame(*size, pix_fmt), VP9_OPTIONS)
    descriptors = [
        b"\x08",  # B only
        b"\x0c",  # B, E: the whole frame in one packet
        b"\xaa\x81\x01\x00\x00\x00",  # I (15 bit), L, B, V with an SS of one bare layer
        b"\xb8\x0e\x00",  # flexible mode, 7-bit picture ID, layer byte
        # Non-flexible, SS with G: N_G=2, groups |TID|U|R=1| + P_DIFF and |R=0|.
        b"\xaa\x81\x01\x00\x00\x08\x02\x04\x01\x20",
    ]
    for descriptor in descriptors:
        payload = descriptor + bitstream
        assert is_keyframe_start("vp9", payload)
        assert keyframe_dimensions("vp9", payload) == size, descriptor.hex()


def test_vp9_scalability_structure_size_wins() -> None:
    # SS: N_S=2 (three spatial layers), Y=1, then WIDTH/HEIGHT per layer; the first one is
    # the base layer's size, whatever the bitstream says.
    ss = bytes([0x50]) + b"".join(
        w.to_bytes(2, "big") + h.to_bytes(2, "big")
        for w, h in [(320, 180), (640, 360), (1280, 720)]
    )
    bitstream = _encode("libvpx-vp9", _frame(642, 362), VP9_OPTIONS)
    assert keyframe_dimensions("vp9", b"\xaa\x81\x01\x00\x00" + ss + bitstream) == (320, 180)
    assert keyframe_dimensions("vp9", b"\x0a" + ss) == (320, 180)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x00" + bytes.fromhex("8249834200281016"), id="no-b-bit"),
        pytest.param(b"\x08" + bytes.fromhex("8249834200"), id="truncated"),
        pytest.param(b"\x08" + bytes.fromhex("8249834300281016"), id="bad-sync-code"),
        pytest.param(b"\x08" + bytes.fromhex("c249834200281016"), id="bad-frame-marker"),
        pytest.param(b"\x08" + bytes.fromhex("86"), id="inter-frame"),
        pytest.param(b"\x08" + bytes.fromhex("88"), id="show-existing-frame"),
        # Flexible, inter: three P_DIFFs all with N=1 is malformed.
        pytest.param(b"\x58\x03\x03\x03" + bytes.fromhex("8249834200281016"), id="p-diff"),
        pytest.param(b"\x0a\x10\x00", id="truncated-ss"),
        pytest.param(b"", id="empty"),
    ],
)
def test_vp9_no_size(payload: bytes) -> None:
    assert keyframe_dimensions("vp9", payload) is None


def test_vp9_profile_3_and_rgb() -> None:
    # Hand-built uncompressed header: marker 2, profile 3 (low 1, high 1), reserved, key,
    # show, no error resilience, sync code, 12-bit, CS_RGB (7), reserved, 16x9.
    w = BitWriter().u(2, 2).u(1, 1).u(1, 1).u(1, 0).u(1, 0).u(1, 0).u(1, 1).u(1, 0)
    w.u(24, 0x498342).u(1, 1).u(3, 7).u(1, 0).u(16, 15).u(16, 8)
    assert keyframe_dimensions("vp9", b"\x08" + w.bytes()) == (16, 9)


# --- AV1, AV1 RTP §4.4 / AV1 §5.5 ----------------------------------------------------------


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _split_obus(stream: bytes) -> list[tuple[int, bytes]]:
    """(header byte, payload) of each OBU of a low-overhead bitstream (AV1 §5.2)."""
    obus = []
    pos = 0
    while pos < len(stream):
        header = stream[pos]
        pos += 2 if header & 0x04 else 1
        assert header & 0x02, "libsvtav1 writes obu_size fields"
        size = shift = 0
        while True:
            byte = stream[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        obus.append((header, stream[pos : pos + size]))
        pos += size
    return obus


def _av1_packets(stream: bytes) -> list[bytes]:
    """The RTP payloads of a keyframe written several ways an AV1 sender may choose."""
    # AV1 RTP §5: temporal delimiters are not sent.
    obus = [(h, p) for h, p in _split_obus(stream) if h >> 3 & 0x0F != 2]
    bare = [bytes([h & ~0x02]) + p for h, p in obus]  # obu_has_size_field = 0
    sized = [bytes([h]) + _leb128(len(p)) + p for h, p in obus]
    extended = [bytes([h & ~0x02 | 0x04, 0x00]) + p for h, p in obus]  # extension byte
    packets = []
    for elements in (bare, sized, extended):
        # W=0 with lengths everywhere, and W=count (the last element without a length).
        packets.append(b"\x08" + b"".join(_leb128(len(e)) + e for e in elements))
        if len(elements) <= 3:
            head = b"".join(_leb128(len(e)) + e for e in elements[:-1])
            packets.append(bytes([len(elements) << 4 | 0x08]) + head + elements[-1])
    # Z=1: a continuation element comes first, the sequence header second.
    packets.append(
        b"\x80" + _leb128(3) + b"\x01\x02\x03" + b"".join(_leb128(len(e)) + e for e in bare)
    )
    return packets


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_av1_libsvtav1(size: tuple[int, int]) -> None:
    # The PyAV wheels (pyproject: av>=14) bundle SVT-AV1.
    assert "libsvtav1" in av.codecs_available
    stream = _encode("libsvtav1", _frame(*size), {"preset": "12"})
    packets = _av1_packets(stream)
    for payload in packets:
        assert keyframe_dimensions("av1", payload) == size, payload[:8].hex()
    assert all(is_keyframe_start("av1", p) for p in packets[:-1])


def _sequence_header(
    *, reduced: bool = False, timing: bool = False, decoder_model: bool = False, points: int = 1
) -> bytes:
    w = BitWriter().u(3, 0).u(1, int(reduced)).u(1, int(reduced))
    if reduced:
        w.u(5, 8)
    else:
        w.u(1, int(timing))
        if timing:
            w.u(32, 1001).u(32, 60000).u(1, 1).u(2, 0).u(1, 1).u(2, 0)  # uvlc() 3
            w.u(1, int(decoder_model))
            if decoder_model:
                w.u(5, 9).u(32, 1).u(5, 31).u(5, 31)
        w.u(1, 1).u(5, points - 1)  # initial_display_delay_present_flag
        for i in range(points):
            w.u(12, i).u(5, 8 + i % 24).u(1, 1)  # seq_level_idx > 7: seq_tier follows
            if decoder_model:
                w.u(1, 1).u(10, 5).u(10, 6).u(1, 0)
            w.u(1, i % 2)
            if i % 2:
                w.u(4, 9)
    w.u(4, 11).u(4, 10).u(12, 1919).u(11, 1079)
    return w.bytes()


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(_sequence_header(reduced=True), id="reduced-still-picture"),
        pytest.param(_sequence_header(), id="plain"),
        pytest.param(_sequence_header(timing=True), id="timing-info"),
        pytest.param(_sequence_header(timing=True, decoder_model=True, points=3), id="model"),
        pytest.param(_sequence_header(timing=True, decoder_model=True, points=32), id="32-ops"),
    ],
)
def test_av1_hand_built_sequence_header(header: bytes) -> None:
    payload = b"\x18" + b"\x08" + header  # W=1, N=1; OBU header type 1 without size field
    assert keyframe_dimensions("av1", payload) == (1920, 1080)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\x18\x08\x00", id="truncated"),
        pytest.param(b"\x18\x30\x00\x00", id="frame-obu-only"),
        pytest.param(b"\x08\x05\x08\x00", id="element-longer-than-packet"),
        pytest.param(b"\x08\x00\x08", id="zero-length-element"),
        pytest.param(b"\x08" + b"\xff" * 9, id="endless-leb128"),
        pytest.param(b"\x18\x0a\x00\x00\x00", id="sequence-header-size-zero"),
        pytest.param(b"", id="empty"),
    ],
)
def test_av1_no_size(payload: bytes) -> None:
    assert keyframe_dimensions("av1", payload) is None


# --- any codec -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["opus", "VP8", "video/vp8", "h265", ""])
def test_unknown_codec(codec: str) -> None:
    assert keyframe_dimensions(codec, b"\x10" + bytes.fromhex("5002009d012a10000900")) is None


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(CODECS), payload=st.binary(max_size=64))
def test_garbage_never_raises(codec: str, payload: bytes) -> None:
    size = keyframe_dimensions(codec, payload)
    if size is not None:
        width, height = size
        assert isinstance(width, int) and isinstance(height, int)
        assert 0 < width <= 65536 and 0 < height <= 65536


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(CODECS), head=st.binary(max_size=4), tail=st.binary(max_size=64))
def test_garbage_after_a_plausible_start_never_raises(codec: str, head: bytes, tail: bytes) -> None:
    # Keyframe-looking starts get the fuzzing into the header parsers, past the descriptors.
    start = {
        "h264": b"\x67",
        "vp8": b"\x10\x50\x02\x00\x9d\x01\x2a",
        "vp9": b"\x08\x82\x49\x83\x42",
        "av1": b"\x18\x08",
    }
    size = keyframe_dimensions(codec, start[codec] + head + tail)
    if size is not None:
        assert 0 < size[0] <= 65536 and 0 < size[1] <= 65536
