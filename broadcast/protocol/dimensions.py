"""Coded picture size from the first RTP packet of a keyframe, without decoding.

``keyframe_dimensions`` reads the few header fields that give the size: it never decodes
picture data and answers ``None`` (never raises) for truncated or malformed payloads, for
packets that do not carry the size, and for codecs it does not know. ``codec`` is the
lower-case encoding name from the SDP rtpmap (``"vp8"``, ``"vp9"``, ``"h264"``, ``"av1"``).

- H.264: RFC 6184 §5.6-5.8 packetization, the SPS of ITU-T H.264 §7.3.2.1.1 (cropped size,
  §7.4.2.1.1 equations 7-19 to 7-22)  https://www.rfc-editor.org/rfc/rfc6184
- VP8: RFC 7741 §4.2-4.3, key frame header of RFC 6386 §9.1  https://www.rfc-editor.org/rfc/rfc7741
- VP9: RFC 9628 §4.2 (scalability structure), VP9 bitstream specification §6.2
  https://www.rfc-editor.org/rfc/rfc9628
- AV1: RTP Payload Format for AV1 §4.4-4.5, AV1 specification §5.3 and §5.5
  https://aomediacodec.github.io/av1-rtp-spec/  https://aomediacodec.github.io/av1-spec/
"""

from __future__ import annotations

__all__ = ["keyframe_dimensions"]

_MAX_SIDE = 65536

# H.264 NAL unit types: ITU-T H.264 Table 7-1, RFC 6184 §5.4 Table 3.
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28
# ITU-T H.264 §7.3.2.1.1: profiles whose SPS carries chroma format, bit depths and scaling
# matrices.
_H264_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})

_AV1_OBU_SEQUENCE_HEADER = 1


class _Bits:
    """MSB-first bit reader over ``data``; reading past the end raises ``IndexError``."""

    __slots__ = ("data", "pos", "size")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.size = len(data) * 8

    def u(self, n: int) -> int:
        """The next ``n`` bits as an unsigned integer (H.264 u(n), VP9/AV1 f(n))."""
        end = self.pos + n
        if end > self.size:
            raise IndexError("bit reader exhausted")
        first = self.pos >> 3
        last = (end + 7) >> 3
        chunk = int.from_bytes(self.data[first:last], "big")
        self.pos = end
        return (chunk >> (last * 8 - end)) & ((1 << n) - 1)

    def ue(self) -> int:
        """ITU-T H.264 §9.1 Exp-Golomb ue(v); more than 31 leading zeros is malformed."""
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise ValueError("ue(v) too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        """ITU-T H.264 §9.1.1 signed Exp-Golomb se(v)."""
        k = self.ue()
        return (k + 1) >> 1 if k & 1 else -(k >> 1)

    def uvlc(self) -> int:
        """AV1 §4.10.3 uvlc(); the zero run is bounded by the payload length."""
        zeros = 0
        while not self.u(1):
            zeros += 1
        if zeros >= 32:
            return (1 << 32) - 1
        return self.u(zeros) + (1 << zeros) - 1


def keyframe_dimensions(codec: str, payload: bytes) -> tuple[int, int] | None:
    """The coded picture's ``(width, height)`` if this keyframe-start packet carries it.

    ``payload`` is an RTP payload for which ``is_keyframe_start(codec, payload)`` holds.
    H.264 answers the cropped luma size from an SPS in the packet (single NAL unit, STAP-A,
    or the first FU-A fragment of an SPS); VP8 the key frame header's 14-bit sizes; VP9 the
    first spatial layer of the scalability structure when present, else the key frame's
    uncompressed header; AV1 the sequence header's maximum frame size. Anything else, or
    anything malformed, answers ``None``.
    """
    try:
        if codec == "vp8":
            size = _vp8(payload)
        elif codec == "h264":
            size = _h264(payload)
        elif codec == "vp9":
            size = _vp9(payload)
        elif codec == "av1":
            size = _av1(payload)
        else:
            return None
    except (IndexError, ValueError):
        return None  # truncated or malformed
    if size is None:
        return None
    width, height = size
    if 0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE:
        return size
    return None


# --- VP8 -----------------------------------------------------------------------------------


def _vp8(p: bytes) -> tuple[int, int] | None:
    b = p[0]
    # RFC 7741 §4.2: |X|R|N|S|R|PID|; the frame begins at S=1, PID=0.
    if b & 0x17 != 0x10:
        return None
    pos = 1
    if b & 0x80:
        x = p[1]  # |I|L|T|K|RSV|
        pos = 2
        if x & 0x80:
            pos = 4 if p[2] & 0x80 else 3  # 7- or 15-bit PictureID
        if x & 0x40:
            pos += 1  # TL0PICIDX
        if x & 0x30:
            pos += 1  # |TID|Y|KEYIDX|
    # RFC 6386 §9.1: 3-byte frame tag (bit 0 is 0 for a key frame), start code 9d 01 2a,
    # then |scale(2)|width(14)| and |scale(2)|height(14)|, little-endian.
    if p[pos] & 0x01 or p[pos + 3 : pos + 6] != b"\x9d\x01\x2a":
        return None
    width = (p[pos + 6] | p[pos + 7] << 8) & 0x3FFF
    height = (p[pos + 8] | p[pos + 9] << 8) & 0x3FFF
    return width, height


# --- H.264 ---------------------------------------------------------------------------------


def _h264(p: bytes) -> tuple[int, int] | None:
    nal_type = p[0] & 0x1F
    if nal_type == _H264_SPS:
        return _h264_sps(p[1:])  # RFC 6184 §5.6: single NAL unit packet
    if nal_type == _H264_STAP_A:
        # RFC 6184 §5.7.1: STAP-A header, then (16-bit NALU size, NAL unit)*.
        n = len(p)
        pos = 1
        while pos + 2 < n:
            size = p[pos] << 8 | p[pos + 1]
            pos += 2
            if size == 0 or pos + size > n:
                return None
            if p[pos] & 0x1F == _H264_SPS:
                return _h264_sps(p[pos + 1 : pos + size])
            pos += size
        return None
    if nal_type == _H264_FU_A:
        # RFC 6184 §5.8: FU indicator, FU header |S|E|R|Type|, then the NAL unit payload
        # without its header. The size fields sit near the start of the SPS, so a first
        # fragment that holds them is enough; a shorter one runs out of bits.
        if p[1] & 0x9F == 0x80 | _H264_SPS:
            return _h264_sps(p[2:])
    return None


def _h264_sps(ebsp: bytes) -> tuple[int, int]:
    """Cropped luma size from an SPS NAL unit payload (after the 1-byte NAL header)."""
    # ITU-T H.264 §7.4.1: drop emulation_prevention_three_byte from every 00 00 03.
    r = _Bits(ebsp.replace(b"\x00\x00\x03", b"\x00\x00"))
    profile_idc = r.u(8)
    r.u(16)  # constraint_set flags, reserved_zero_2bits, level_idc
    if r.ue() > 31:  # seq_parameter_set_id
        raise ValueError("seq_parameter_set_id")
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in _H264_HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc > 3:
            raise ValueError("chroma_format_idc")
        if chroma_format_idc == 3:
            separate_colour_plane = r.u(1)
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.u(1):  # seq_scaling_list_present_flag[i]
                    _h264_skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    pic_order_cnt_type = r.ue()
    if pic_order_cnt_type == 0:
        r.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif pic_order_cnt_type == 1:
        r.u(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        cycle = r.ue()  # num_ref_frames_in_pic_order_cnt_cycle, 0..255
        if cycle > 255:
            raise ValueError("num_ref_frames_in_pic_order_cnt_cycle")
        for _ in range(cycle):
            r.se()  # offset_for_ref_frame[i]
    elif pic_order_cnt_type != 2:
        raise ValueError("pic_order_cnt_type")
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1  # pic_width_in_mbs_minus1
    height_map_units = r.ue() + 1  # pic_height_in_map_units_minus1
    frame_mbs_only = r.u(1)
    if not frame_mbs_only:
        r.u(1)  # mb_adaptive_frame_field_flag
    r.u(1)  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_map_units * 16  # equation 7-18, FrameHeightInMbs
    if r.u(1):  # frame_cropping_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        # Equations 7-19 to 7-22; ChromaArrayType is 0 with separate colour planes.
        if separate_colour_plane or chroma_format_idc == 0:
            crop_x, crop_y = 1, 2 - frame_mbs_only
        else:
            sub_width_c = 1 if chroma_format_idc == 3 else 2
            sub_height_c = 2 if chroma_format_idc == 1 else 1
            crop_x, crop_y = sub_width_c, sub_height_c * (2 - frame_mbs_only)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    return width, height


def _h264_skip_scaling_list(r: _Bits, size: int) -> None:
    """ITU-T H.264 §7.3.2.1.1.1 scaling_list(): read past its delta_scale values."""
    last_scale = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last_scale + r.se() + 256) % 256
        if next_scale:
            last_scale = next_scale
        else:
            return  # the rest of the list repeats last_scale: nothing more is coded


# --- VP9 -----------------------------------------------------------------------------------


def _vp9(p: bytes) -> tuple[int, int] | None:
    b = p[0]
    # RFC 9628 §4.2: |I|P|L|F|B|E|V|Z|. Only a layer frame's first packet (B=1) holds the
    # uncompressed header, and the scalability structure rides on it too.
    if not b & 0x08:
        return None
    pos = 1
    if b & 0x80:
        pos = 3 if p[1] & 0x80 else 2  # 7- or 15-bit PICTURE ID
    if b & 0x20:
        # Layer indices |TID|U|SID|D|; non-flexible mode (F=0) adds TL0PICIDX.
        pos += 1 if b & 0x10 else 2
    if b & 0x50 == 0x50:
        # Flexible mode, inter-picture predicted: up to 3 reference indices |P_DIFF|N|.
        for _ in range(3):
            pos += 1
            if not p[pos - 1] & 0x01:
                break
        else:
            return None  # N=1 on the third reference index
    if b & 0x02:
        # Scalability structure: |N_S(3)|Y|G|-|-|-|, then N_S+1 times WIDTH, HEIGHT (16 bits
        # each) if Y, then N_G and the picture groups if G.
        ss = p[pos]
        pos += 1
        if ss & 0x10:
            return p[pos] << 8 | p[pos + 1], p[pos + 2] << 8 | p[pos + 3]
        if ss & 0x08:
            groups = p[pos]
            pos += 1
            for _ in range(groups):
                pos += 1 + (p[pos] >> 2 & 0x03)  # |TID|U|R|-|-|, then R P_DIFFs
    return _vp9_uncompressed_header(p[pos : pos + 16])


def _vp9_uncompressed_header(frame: bytes) -> tuple[int, int] | None:
    """VP9 bitstream specification §6.2 uncompressed_header(), up to frame_size()."""
    r = _Bits(frame)
    if r.u(2) != 2:  # frame_marker
        return None
    profile = r.u(1)
    profile |= r.u(1) << 1  # profile_low_bit, profile_high_bit
    if profile == 3:
        r.u(1)  # reserved_zero
    if r.u(1):  # show_existing_frame: no header, no size
        return None
    if r.u(1):  # frame_type: 0 is KEY_FRAME
        return None
    r.u(2)  # show_frame, error_resilient_mode
    if r.u(24) != 0x498342:  # frame_sync_code
        return None
    # §6.2.2 color_config()
    if profile >= 2:
        r.u(1)  # ten_or_twelve_bit
    color_space = r.u(3)
    if color_space != 7:  # CS_RGB
        r.u(1)  # color_range
        if profile in (1, 3):
            r.u(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        r.u(1)  # reserved_zero
    # §6.2.3 frame_size()
    return r.u(16) + 1, r.u(16) + 1


# --- AV1 -----------------------------------------------------------------------------------


def _leb128(p: bytes, pos: int) -> tuple[int, int]:
    """AV1 §4.10.5 leb128(): (value, position after it); at most 8 bytes."""
    value = 0
    for i in range(8):
        byte = p[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("leb128 too long")


def _av1(p: bytes) -> tuple[int, int] | None:
    # AV1 RTP §4.4 aggregation header |Z|Y|W(2)|N|-|-|-|. W=0: every OBU element has a
    # leb128 length; W=1..3: that many elements, the last one without a length.
    header = p[0]
    count = header >> 4 & 0x03
    n = len(p)
    pos = 1
    index = 0
    while pos < n:
        index += 1
        if count and index == count:
            end = n
        else:
            size, pos = _leb128(p, pos)
            end = pos + size
            if size == 0 or end > n:
                return None
        # Z=1: the first element continues an OBU from an earlier packet; skip it.
        if not (index == 1 and header & 0x80):
            obu_header = p[pos]
            # AV1 §5.3.2 obu_header(): |F|type(4)|X|S|-|, optional extension byte.
            if obu_header >> 3 & 0x0F == _AV1_OBU_SEQUENCE_HEADER:
                start = pos + (2 if obu_header & 0x04 else 1)
                if obu_header & 0x02:  # obu_has_size_field, allowed though not advised
                    obu_size, start = _leb128(p, start)
                    end = min(end, start + obu_size)
                return _av1_sequence_header(p[start:end])
        if count and index == count:
            break
        pos = end
    return None


def _av1_sequence_header(obu: bytes) -> tuple[int, int]:
    """AV1 §5.5.1 sequence_header_obu(), up to max_frame_height_minus_1."""
    r = _Bits(obu)
    r.u(3)  # seq_profile
    r.u(1)  # still_picture
    if r.u(1):  # reduced_still_picture_header
        r.u(5)  # seq_level_idx[0]
    else:
        decoder_model_info_present = 0
        buffer_delay_length = 0
        if r.u(1):  # timing_info_present_flag
            # §5.5.3 timing_info()
            r.u(32)  # num_units_in_display_tick
            r.u(32)  # time_scale
            if r.u(1):  # equal_picture_interval
                r.uvlc()  # num_ticks_per_picture_minus_1
            decoder_model_info_present = r.u(1)
            if decoder_model_info_present:
                # §5.5.4 decoder_model_info()
                buffer_delay_length = r.u(5) + 1
                r.u(32)  # num_units_in_decoding_tick
                r.u(10)  # buffer_removal_time_length_minus_1, frame_presentation_...
        initial_display_delay_present = r.u(1)
        for _ in range(r.u(5) + 1):  # operating_points_cnt_minus_1: at most 32 points
            r.u(12)  # operating_point_idc[i]
            if r.u(5) > 7:  # seq_level_idx[i]
                r.u(1)  # seq_tier[i]
            if decoder_model_info_present and r.u(1):  # decoder_model_present_for_this_op
                # §5.5.5 operating_parameters_info(): decoder and encoder buffer delays,
                # low_delay_mode_flag.
                r.u(2 * buffer_delay_length + 1)
            if initial_display_delay_present and r.u(1):
                r.u(4)  # initial_display_delay_minus_1[i]
    width_bits = r.u(4) + 1  # frame_width_bits_minus_1
    height_bits = r.u(4) + 1  # frame_height_bits_minus_1
    return r.u(width_bits) + 1, r.u(height_bits) + 1
