"""VP8 PictureID/TL0PICIDX: reading and rewriting (RFC 7741 §4.2), and continuity across a
simulcast layer switch."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from broadcast.protocol.vp8 import Vp8Fields, read_fields, rewrite
from broadcast.sfu.stream import Stream
from tests.test_sfu import VP8_PUB, Sink, downtrack, header

# X=1 S=1 | I=1 L=1 T=1 | M=1 PictureID 0x1234 | TL0PICIDX 0x56 | TID/Y/KEYIDX | frame tag
LONG = bytes([0x90, 0xE0, 0x80 | 0x12, 0x34, 0x56, 0x40, 0x00, 0x9D, 0x01, 0x2A])
# X=1 S=1 | I=1 | M=0 PictureID 0x7F | frame tag (P=1)
SHORT = bytes([0x90, 0x80, 0x7F, 0x01])
PLAIN = bytes([0x10, 0x00, 0x9D])  # no extension byte


def test_read_fields() -> None:
    assert read_fields(LONG) == Vp8Fields(0x1234, True, 0x56)
    assert read_fields(SHORT) == Vp8Fields(0x7F, False, None)
    assert read_fields(PLAIN) == Vp8Fields(None, False, None)
    assert read_fields(LONG[:3]) == Vp8Fields(None, False, None)  # truncated PictureID
    assert read_fields(b"") == Vp8Fields(None, False, None)


def test_rewrite_wraps_each_field_at_its_width() -> None:
    out = rewrite(LONG, 0x7FFF - 0x1234 + 2, 0xAA)
    assert read_fields(out) == Vp8Fields(1, True, 0x00)
    assert out[5:] == LONG[5:] and out[:2] == LONG[:2]
    assert read_fields(rewrite(SHORT, 2, 9)) == Vp8Fields(1, False, None)
    assert rewrite(PLAIN, 5, 5) == PLAIN


@given(st.binary(max_size=12), st.integers(0, 0x7FFF), st.integers(0, 0xFF))
def test_untrusted_payloads_never_raise_and_keep_their_length(
    payload: bytes, picture_offset: int, tl0_offset: int
) -> None:
    out = rewrite(payload, picture_offset, tl0_offset)
    assert len(out) == len(payload)
    before, after = read_fields(payload), read_fields(out)
    assert (before.picture_id is None) == (after.picture_id is None)
    if before.picture_id is not None and after.picture_id is not None:
        mask = 0x7FFF if before.long_id else 0x7F
        assert after.picture_id == (before.picture_id + picture_offset) & mask


def vp8(picture_id: int, tl0: int, key: bool) -> bytes:
    tag = b"\x00\x9d\x01\x2a\x40\x01\xb4\x00" if key else b"\x01\x00\x00"
    return bytes([0x90, 0xC0, 0x80 | picture_id >> 8, picture_id & 0xFF, tl0]) + tag


async def test_picture_ids_run_on_across_a_layer_switch() -> None:
    now = asyncio.get_running_loop().time()
    stream = Stream("sim")
    layers = stream.set_layers(("l", "h"))
    for feed in layers.values():
        feed.attach_source(VP8_PUB, lambda ssrc: None)
    sink = Sink()
    track = downtrack(sink)
    stream.subscribe("v", "video", track, lambda *args: None, layer="l")
    # Layer l numbers its pictures from 100, layer h (another encoder) from 30000.
    layers["l"].on_rtp(96, 1, 1000, True, vp8(100, 7, key=True), 0x0C, now)
    layers["l"].on_rtp(96, 2, 4000, True, vp8(101, 8, key=False), 0x0C, now + 0.03)
    layers["h"].on_rtp(96, 499, 6000, True, vp8(29999, 199, key=False), 0x0B, now + 0.03)
    stream.select_layer("v", "h")
    layers["h"].on_rtp(96, 500, 9000, True, vp8(30000, 200, key=True), 0x0B, now + 0.06)
    layers["h"].on_rtp(96, 501, 12000, True, vp8(30001, 201, key=False), 0x0B, now + 0.09)
    fields = [read_fields(p[12:]) for p in sink.packets]
    assert [f.picture_id for f in fields] == [100, 101, 102, 103]
    assert [f.tl0picidx for f in fields] == [7, 8, 9, 10]
    # A retransmission of h's packet carries the rewritten numbers too.
    track.on_nack([header(sink.packets[-1])[2]], layers["h"].history, layers["h"].generation)
    assert read_fields(sink.packets[-1][14:]).picture_id == 103
