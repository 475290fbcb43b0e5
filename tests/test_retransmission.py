"""Retransmission and padding limits of one viewer's downtrack, with literal packets."""

from __future__ import annotations

import struct

from broadcast.sfu.codecs import CodecSpec
from broadcast.sfu.downtrack import DownTrack
from broadcast.sfu.feed import TrackFeed
from tests.test_sfu import KEY, VP8_PUB, VP8_VIEW, Sink, downtrack, header

STAMP = b"\x12\x34\x56"  # an abs-send-time value


def fed(track: DownTrack, count: int, size: int = 1000) -> TrackFeed:
    feed = TrackFeed("video", now=lambda: 0.0)
    feed.attach_source(VP8_PUB, lambda ssrc: None)
    feed.add(track)
    feed.on_rtp(96, 1000, 0, True, KEY, 0x1234, 0.0)
    for i in range(1, count):
        feed.on_rtp(96, 1000 + i, 3000 * i, True, b"\x00" * size, 0x1234, 0.0)
    return feed


async def test_a_packet_is_resent_once_per_round_trip() -> None:
    sink = Sink()
    track = downtrack(sink)
    feed = fed(track, 3)
    track.rtt = 10.0
    lost = header(sink.packets[1])[2]
    feed.on_nack(track, [lost])
    feed.on_nack(track, [lost])  # asked again before the first copy could arrive
    assert track.retransmits == 1 and track.nacks == 2
    assert track.nacked == {lost}  # what the ABR policy counts: distinct packets


async def test_retransmissions_never_exceed_the_media_rate() -> None:
    sink = Sink()
    track = downtrack(sink)
    feed = fed(track, 100)
    sent = [header(p)[2] for p in sink.packets]
    media = sum(len(p) - 12 for p in sink.packets)
    feed.on_nack(track, sent)  # a flood of NACKs for everything, at once
    # Nothing was forwarded since the budget's second began: only the minimum budget.
    assert 0 < track.resent_octets < media / 4


async def test_padding_is_rtx_copies_of_recent_packets_stamped_for_bandwidth_estimation() -> None:
    sink = Sink()
    track = DownTrack(
        kind="video",
        ssrc=0xAAAA,
        rtx_ssrc=0xBBBB,
        codecs=VP8_VIEW,
        send=sink,
        request_keyframe=lambda: None,
        abs_send_time_id=3,
    )
    fed(track, 20, size=500)
    media = len(sink.packets)
    assert track.pad(2000, STAMP) >= 2000
    padding = sink.packets[media:]
    assert 4 <= len(padding) <= 5 and track.padding_octets >= 2000
    recent = {header(p)[2] for p in sink.packets[media - 16 : media]}
    for packet in padding:
        pt, _, _, _, ssrc = header(packet)
        assert (pt, ssrc, packet[0]) == (121, 0xBBBB, 0x90)  # RTX, with a header extension
        assert packet[12:16] == b"\xbe\xde\x00\x01" and packet[16:20] == b"\x32" + STAMP
        (original,) = struct.unpack("!H", packet[20:22])
        assert original in recent
    assert track.retransmits == 0  # padding is not counted as repair


async def test_no_padding_without_rtx_or_before_media() -> None:
    sink = Sink()
    assert downtrack(sink).pad(1000, STAMP) == 0  # nothing sent yet
    plain = DownTrack(
        kind="video",
        ssrc=1,
        rtx_ssrc=2,
        codecs=[CodecSpec(120, "video/vp8", 90000)],
        send=sink,
        request_keyframe=lambda: None,
    )
    fed(plain, 5)
    assert plain.pad(1000, STAMP) == 0
