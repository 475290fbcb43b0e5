"""Keyframe and frame-start detection on RTP payloads, without decoding.

Both functions run once per forwarded video packet: they read a few header bytes, allocate
nothing, and answer ``False`` (never raise) for truncated or malformed payloads. ``codec``
is the lower-case encoding name from the SDP rtpmap (``"vp8"``, ``"vp9"``, ``"h264"``,
``"av1"``); any other name answers ``False``.

- H.264: RFC 6184 §5.6-5.8 (packetization-mode 0 and 1: single NAL unit, STAP-A, FU-A)
  https://www.rfc-editor.org/rfc/rfc6184
- VP8: RFC 7741 §4.2-4.3  https://www.rfc-editor.org/rfc/rfc7741
- VP9: RFC 9628 §4.2  https://www.rfc-editor.org/rfc/rfc9628
- AV1: RTP Payload Format for AV1 §4.4  https://aomediacodec.github.io/av1-rtp-spec/
"""

from __future__ import annotations

__all__ = ["is_frame_start", "is_keyframe_start"]

# H.264 NAL unit types: ITU-T H.264 Table 7-1, RFC 6184 §5.4 Table 3.
_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28


def is_keyframe_start(codec: str, payload: bytes) -> bool:
    """True if ``payload`` is the first RTP packet of a keyframe: a decoder can start here.

    For H.264 that is a packet carrying an SPS or the start of an IDR slice, whichever the
    sender puts first.
    """
    # One flat function: it runs per packet, and a call per codec would cost more than the
    # parsing. Short payloads end in IndexError, which is cheaper than checking every index.
    p = payload
    try:
        if codec == "vp8":
            b = p[0]
            # RFC 7741 §4.2: |X|R|N|S|R|PID|. The VP8 payload header is present only at the
            # start of partition 0 (S=1, PID=0).
            if b & 0x17 != 0x10:
                return False
            pos = 1
            if b & 0x80:
                # Extension byte |I|L|T|K|RSV|.
                x = p[1]
                pos = 2
                if x & 0x80:
                    # PictureID: 7 bits, or 15 when its first bit (M) is set.
                    pos = 4 if p[2] & 0x80 else 3
                if x & 0x40:
                    pos += 1  # TL0PICIDX
                if x & 0x30:
                    pos += 1  # |TID|Y|KEYIDX|, present if T or K
            # RFC 7741 §4.3: payload header |Size0|H|VER|P|; P=0 is a key frame.
            return not p[pos] & 0x01

        if codec == "h264":
            # RFC 6184 §5.3: NAL unit header |F|NRI|Type|.
            nal_type = p[0] & 0x1F
            if nal_type == _H264_FU_A:
                # RFC 6184 §5.8: FU indicator, then FU header |S|E|R|Type|; S marks the first
                # fragment, Type is the fragmented NAL unit's own type.
                fu_header = p[1]
                original = fu_header & 0x1F
                if not fu_header & 0x80:
                    return False
                # An IDR picture may have several slices: only its first slice
                # (first_mb_in_slice = 0, coded ue(v) "1", ITU-T H.264 §7.3.3) starts it.
                return original == _H264_SPS or (original == _H264_IDR and p[2] & 0x80 != 0)
            if nal_type == _H264_SPS:
                return True  # RFC 6184 §5.6: single NAL unit packet
            if nal_type == _H264_IDR:
                return p[1] & 0x80 != 0
            if nal_type == _H264_STAP_A:
                # RFC 6184 §5.7.1: STAP-A header, then (16-bit NALU size, NAL unit)*. Senders
                # put SPS/PPS (and often the IDR) in one STAP-A ahead of the slices.
                n = len(p)
                pos = 1
                while pos + 2 < n:
                    size = p[pos] << 8 | p[pos + 1]
                    pos += 2
                    if size == 0 or pos + size > n:
                        return False
                    inner = p[pos] & 0x1F
                    if inner == _H264_IDR or inner == _H264_SPS:
                        return True
                    pos += size
            return False

        if codec == "vp9":
            b = p[0]
            # RFC 9628 §4.2: |I|P|L|F|B|E|V|Z|. B: start of a (layer) frame; P: inter-picture
            # predicted. A base-layer frame that starts and is not inter-predicted is a key
            # frame.
            if b & 0x48 != 0x08:
                return False
            if not b & 0x20:
                return True  # no layer indices: a single spatial layer, SID is 0
            pos = 1
            if b & 0x80:
                # PICTURE ID: 7 bits, or 15 when its first bit (M) is set.
                pos = 3 if p[1] & 0x80 else 2
            # Layer indices |TID|U|SID|D|, at the same place in flexible and non-flexible
            # mode. Upper spatial layers of a keyframe also have P=0 but depend on SID 0.
            return not p[pos] & 0x0E

        if codec == "av1":
            # AV1 RTP §4.4 aggregation header |Z|Y|W|N|-|-|-|: N=1 is the first packet of a
            # coded video sequence (a keyframe with its sequence header). Z=1 (continuation
            # of an earlier OBU) contradicts it.
            return p[0] & 0x88 == 0x08
    except IndexError:
        return False  # truncated
    return False


def is_frame_start(codec: str, payload: bytes) -> bool:
    """True if ``payload`` is the first RTP packet of a frame (any frame, not just keyframes).

    H.264: any packet that is not an FU-A continuation; VP8: S=1 and PID=0; VP9: B=1 (the
    start of a layer frame); AV1: Z=0.
    """
    if not payload:
        return False
    b = payload[0]
    if codec == "vp8":
        # RFC 7741 §4.2: S=1 and PID=0 is the first packet of a frame.
        return b & 0x17 == 0x10
    if codec == "h264":
        nal_type = b & 0x1F
        if nal_type == _H264_FU_A:
            # RFC 6184 §5.8: only the fragment with S=1 starts a NAL unit.
            return len(payload) > 1 and payload[1] & 0x80 != 0
        # Single NAL unit (1-23) and STAP-A (24) carry whole NAL units. Types 0 and 25-31
        # are reserved or interleaved-mode only (RFC 6184 §5.2): not something we forward.
        return 0 < nal_type <= _H264_STAP_A
    if codec == "vp9":
        # RFC 9628 §4.2: B=1 is the first packet of a layer frame.
        return b & 0x08 != 0
    if codec == "av1":
        # AV1 RTP §4.4: Z=0, the first OBU element is not the continuation of an earlier one.
        return not b & 0x80
    return False
