"""VP8 payload descriptor (RFC 7741 §4.2): read and rewrite PictureID and TL0PICIDX.

Simulcast layers come from separate encoders, each numbering its pictures on its own. A
viewer moved from one layer to another gets the new layer's numbers shifted so that they
run on from the last picture it received, as one encoder's would: a receiver that tracks
frame references by PictureID (libwebrtc's VP8 reference finder) sees no jump.

Both functions take untrusted bytes: a truncated or malformed descriptor reads as "no
fields" and is passed through unchanged, never raising.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Vp8Fields", "read_fields", "rewrite"]


class Vp8Fields(NamedTuple):
    picture_id: int | None  # None: the descriptor carries no PictureID
    long_id: bool  # 15-bit PictureID (M=1); else 7-bit
    tl0picidx: int | None


_NONE = Vp8Fields(None, False, None)


def read_fields(payload: bytes) -> Vp8Fields:
    """PictureID and TL0PICIDX of one packet's descriptor, where present."""
    p = payload
    if len(p) < 2 or not p[0] & 0x80:  # X: no extension byte, so neither field
        return _NONE
    x = p[1]
    pos = 2
    picture_id: int | None = None
    long_id = False
    if x & 0x80:  # I
        if len(p) <= pos:
            return _NONE
        long_id = bool(p[pos] & 0x80)
        if long_id:
            if len(p) <= pos + 1:
                return _NONE
            picture_id = (p[pos] & 0x7F) << 8 | p[pos + 1]
            pos += 2
        else:
            picture_id = p[pos]
            pos += 1
    tl0: int | None = None
    if x & 0x40:  # L
        if len(p) <= pos:
            return _NONE
        tl0 = p[pos]
    return Vp8Fields(picture_id, long_id, tl0)


def rewrite(payload: bytes, picture_offset: int, tl0_offset: int) -> bytes:
    """``payload`` with its PictureID and TL0PICIDX advanced by the offsets (modulo their
    width), everything else untouched.

    Runs per forwarded packet of a viewer that changed layer: one flat function, and
    short payloads end in IndexError, cheaper than checking every index.
    """
    p = payload
    try:
        if not p[0] & 0x80:  # X: no extension byte, so neither field
            return p
        x = p[1]
        if x & 0x80:  # I
            if p[2] & 0x80:  # M: 15-bit PictureID
                value = (((p[2] & 0x7F) << 8 | p[3]) + picture_offset) & 0x7FFF
                head = bytes((p[0], x, 0x80 | value >> 8, value & 0xFF))
            else:
                head = bytes((p[0], x, (p[2] + picture_offset) & 0x7F))
        else:
            head = p[:2]
        pos = len(head)
        if x & 0x40:  # L
            head += bytes(((p[pos] + tl0_offset) & 0xFF,))
            pos += 1
    except IndexError:
        return payload
    return head + p[pos:]
