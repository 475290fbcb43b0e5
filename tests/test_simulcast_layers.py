"""Simulcast layers in the SFU: one feed per rid, one layer per viewer, switches at keyframes."""

from __future__ import annotations

import asyncio
import struct

from broadcast.sfu.feed import LAYER_TIMEOUT, PLI_INTERVAL, SWITCH_PLI_RETRY, TrackFeed
from broadcast.sfu.simulcast import LayerState, choose_layer
from broadcast.sfu.stream import Stream
from tests.test_sfu import DELTA, VP8_PUB, Sink, downtrack, header


def key(width: int, height: int) -> bytes:
    """A VP8 keyframe's first packet: descriptor S=1, frame tag P=0, start code, size."""
    return b"\x10\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height)


def no_report(ntp: int, rtp: int, packets: int, octets: int) -> None:
    return None


def test_choose_layer() -> None:
    l_ = LayerState("l", True, (320, 180), 1.0)
    h = LayerState("h", True, (1280, 720), 2.0)
    h_unsized = LayerState("h", True, None, 0.5)
    assert choose_layer([l_, h]) == "h"  # the largest picture
    assert choose_layer([l_, h], "l") == "l"
    assert choose_layer([l_, LayerState("h", False, (1280, 720), 2.0)], "h") == "l"
    assert choose_layer([l_, h], "x") == "h"  # a rid not sent: the highest
    assert choose_layer([l_, h_unsized]) == "l"  # sizes known beat sizes unknown
    assert choose_layer([LayerState("l", True, None, 0.5), LayerState("m", True, None, 0.2)]) == "m"
    assert choose_layer([LayerState("l", False)]) is None


def layered_stream() -> tuple[Stream, dict[str, TrackFeed], list[str]]:
    stream = Stream("sim")
    layers = stream.set_layers(("l", "h"))
    asked: list[str] = []
    for rid, feed in layers.items():
        feed.attach_source(VP8_PUB, lambda ssrc, rid=rid: asked.append(rid))
    return stream, layers, asked


async def test_viewers_start_low_move_up_at_a_keyframe_and_stay_continuous() -> None:
    now = asyncio.get_running_loop().time()
    stream, layers, asked = layered_stream()
    auto_sink, pinned_sink = Sink(), Sink()
    auto, pinned = downtrack(auto_sink), downtrack(pinned_sink)
    stream.subscribe("auto", "video", auto, no_report)
    stream.subscribe("pinned", "video", pinned, no_report, layer="l")
    assert auto.source is layers["l"] and pinned.source is layers["l"]  # nothing sends yet

    layers["l"].on_rtp(96, 100, 1000, True, key(320, 180), 0x0C, now)
    layers["h"].on_rtp(96, 7000, 5000, True, DELTA, 0x0B, now)  # h sends, size unknown
    stream.place_layers(now)
    assert auto.source is layers["l"] and len(auto_sink.packets) == 1
    layers["h"].on_rtp(96, 7001, 8000, True, key(1280, 720), 0x0B, now + 0.01)
    stream.place_layers(now + 0.02)  # h is the largest now: switch at its next keyframe
    assert auto in layers["h"].incoming and asked[-1] == "h"
    layers["l"].on_rtp(96, 101, 4000, True, DELTA, 0x0C, now + 0.03)
    layers["h"].on_rtp(96, 7002, 11000, True, DELTA, 0x0B, now + 0.03)
    assert len(auto_sink.packets) == 2  # still layer l until h's keyframe
    layers["h"].on_rtp(96, 7003, 14000, True, key(1280, 720), 0x0B, now + 0.06)
    layers["l"].on_rtp(96, 102, 7000, True, DELTA, 0x0C, now + 0.06)
    assert auto.source is layers["h"] and not layers["h"].incoming
    seqs = [header(p)[2] for p in auto_sink.packets]
    ssrcs = {header(p)[4] for p in auto_sink.packets}
    assert len(seqs) == 3 and seqs == [seqs[0], (seqs[0] + 1) & 0xFFFF, (seqs[0] + 2) & 0xFFFF]
    assert ssrcs == {0xAAAA} and auto_sink.packets[-1].endswith(key(1280, 720))
    stamps = [header(p)[3] for p in auto_sink.packets]
    assert 0 < (stamps[2] - stamps[1]) & 0xFFFFFFFF < 90000  # the wall-clock gap
    assert pinned.source is layers["l"] and len(pinned_sink.packets) == 3

    # A NACK for a packet sent from layer l is answered from layer l's history: a
    # receiver may wait for it before it lets h's keyframe through.
    auto.on_nack([seqs[1]], layers["h"].history, layers["h"].generation)
    assert auto.retransmits == 1
    rtx = auto_sink.packets[-1]
    assert header(rtx)[4] == auto.rtx_ssrc and rtx[12:14] == struct.pack("!H", seqs[1])
    assert rtx[14:] == DELTA  # l's packet 101, not anything of h's

    stream.unsubscribe("auto")
    assert auto not in layers["h"].downtracks and auto.source is None


async def test_pinned_layer_falls_back_while_it_is_not_sending() -> None:
    now = asyncio.get_running_loop().time()
    stream, layers, _ = layered_stream()
    sink = Sink()
    track = downtrack(sink)
    stream.subscribe("v", "video", track, no_report, layer="h")
    layers["h"].on_rtp(96, 1, 0, True, key(1280, 720), 0x0B, now)
    layers["l"].on_rtp(96, 1, 0, True, key(320, 180), 0x0C, now)
    stream.place_layers(now)
    assert track.source is layers["h"]
    later = now + LAYER_TIMEOUT + 0.1  # h went quiet (the encoder dropped it)
    layers["l"].on_rtp(96, 2, 3000, True, DELTA, 0x0C, later - 0.05)
    stream.place_layers(later)
    assert track in layers["l"].incoming
    layers["l"].on_rtp(96, 3, 6000, True, key(320, 180), 0x0C, later)
    assert track.source is layers["l"]
    stream.select_layer("v", "l")  # already there: nothing to do
    assert track.source is layers["l"] and not layers["h"].incoming


async def test_a_switch_asks_again_until_the_keyframe_comes() -> None:
    now = asyncio.get_running_loop().time()
    stream, layers, asked = layered_stream()
    track = downtrack(Sink())
    stream.subscribe("v", "video", track, no_report, layer="h")
    layers["h"].on_rtp(96, 1, 0, True, key(1280, 720), 0x0B, now)
    layers["l"].on_rtp(96, 1, 0, True, key(320, 180), 0x0C, now)
    stream.select_layer("v", "l")
    assert track in layers["l"].incoming and asked.count("l") == 1
    layers["l"].on_rtp(96, 2, 3000, True, DELTA, 0x0C, now + 0.5)
    assert asked.count("l") == 1  # the request may still be answered
    layers["l"].on_rtp(96, 3, 6000, True, DELTA, 0x0C, now + SWITCH_PLI_RETRY + 0.1)
    await asyncio.sleep(PLI_INTERVAL + 0.05)  # requests stay PLI_INTERVAL apart
    assert asked.count("l") == 2  # it was dropped: asked again
    layers["l"].on_rtp(96, 4, 9000, True, key(320, 180), 0x0C, now + SWITCH_PLI_RETRY + 0.2)
    assert track.source is layers["l"]


async def test_a_single_layer_publisher_takes_the_viewers_back() -> None:
    stream, layers, _ = layered_stream()
    track = downtrack(Sink())
    stream.subscribe("v", "video", track, no_report, layer="h")
    stream.set_publisher(None)
    assert stream.set_layers(()) == {} and stream.layers == {}
    assert track.source is stream.feeds["video"] and stream.track_feeds("video") == [
        stream.feeds["video"]
    ]
    again = stream.set_layers(("l", "h"))
    assert track.source is again["h"] and again["h"] is not layers["h"]  # pinned, waiting
