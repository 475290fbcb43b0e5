"""The forwarding core with literal packets: rewriting, continuity, RTX, PLI, reports."""

from __future__ import annotations

import asyncio
import struct

from broadcast.protocol.rtp import ntp_to_seconds, seconds_to_ntp
from broadcast.sfu.codecs import CodecSpec
from broadcast.sfu.downtrack import DownTrack
from broadcast.sfu.feed import (
    GOP_CACHE_BYTES,
    PLI_ANSWER_LIMIT,
    PLI_INTERVAL,
    REPLAY_AFTER,
    TrackFeed,
)
from broadcast.sfu.stream import Stream

VP8_PUB = [CodecSpec(96, "video/vp8", 90000), CodecSpec(97, "video/rtx", 90000, None, {"apt": 96})]
VP8_VIEW = [
    CodecSpec(120, "video/vp8", 90000),
    CodecSpec(121, "video/rtx", 90000, None, {"apt": 120}),
]
KEY = b"\x10\x00\x9d\x01\x2a"  # VP8 descriptor S=1 PID=0, payload header P=0: keyframe
DELTA = b"\x10\x01\x00\x00"  # P=1


def header(packet: bytes) -> tuple[int, int, int, int, int]:
    _, second, seq, ts, ssrc = struct.unpack("!BBHII", packet[:12])
    return second & 0x7F, second >> 7, seq, ts, ssrc


class Sink:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.packets.append(data)


def downtrack(sink: Sink, requests: list[int] | None = None) -> DownTrack:
    return DownTrack(
        kind="video",
        ssrc=0xAAAA,
        rtx_ssrc=0xBBBB,
        codecs=VP8_VIEW,
        send=sink,
        request_keyframe=lambda: (requests or []).append(1),
    )


def clocked_feed(start: float) -> tuple[list[float], list[int], TrackFeed]:
    """A video feed on a hand-moved clock ([0]), recording the SSRCs it asks keyframes of."""
    clock = [start]
    sent: list[int] = []
    feed = TrackFeed("video", now=lambda: clock[0])
    feed.attach_source(VP8_PUB, sent.append)
    return clock, sent, feed


def test_starts_at_a_keyframe_and_rewrites_every_field() -> None:
    sink = Sink()
    track = downtrack(sink)
    track.set_source(VP8_PUB)
    track.forward(96, 1000, 5000, False, DELTA, False, b"", 0.0)
    assert sink.packets == []  # never start on a delta frame
    track.forward(96, 1001, 8000, True, KEY, True, b"", 0.0)
    track.forward(96, 1002, 11000, True, DELTA, False, b"", 0.033)
    (pt1, m1, seq1, ts1, ssrc1), (pt2, _, seq2, ts2, _) = map(header, sink.packets)
    assert (pt1, m1, ssrc1) == (120, 1, 0xAAAA)
    assert pt2 == 120 and seq2 == (seq1 + 1) & 0xFFFF and ts2 == (ts1 + 3000) & 0xFFFFFFFF
    assert seq1 < 0x8000 + 1  # starts low, like aiortc (SRTP rollover)
    assert sink.packets[0].endswith(KEY)


def test_source_change_keeps_sequence_and_timestamp_continuous() -> None:
    sink = Sink()
    track = downtrack(sink)
    track.set_source(VP8_PUB)
    track.forward(96, 60000, 1_000_000, True, KEY, True, b"", 10.0)
    track.forward(96, 60001, 1_003_000, True, DELTA, False, b"", 10.033)
    track.set_source(VP8_PUB)  # a new publisher: unrelated numbering
    track.forward(96, 7, 42, True, DELTA, False, b"", 11.0)  # waits for a keyframe
    track.forward(96, 8, 3042, True, KEY, True, b"", 11.5)
    seqs = [header(p)[2] for p in sink.packets]
    stamps = [header(p)[3] for p in sink.packets]
    assert len(seqs) == 3 and seqs[2] == (seqs[1] + 1) & 0xFFFF
    gap = (stamps[2] - stamps[1]) & 0xFFFFFFFF
    assert abs(gap - int(1.467 * 90000)) < 200  # the wall-clock gap, in 90 kHz units


def test_nack_is_answered_with_rtx_from_history() -> None:
    async def scenario() -> None:
        sink = Sink()
        feed = TrackFeed("video", now=lambda: 0.0)
        feed.attach_source(VP8_PUB, lambda ssrc: None)
        track = downtrack(sink)
        feed.add(track)
        feed.on_rtp(96, 500, 9000, False, KEY, 0x1234, 0.0)
        feed.on_rtp(96, 501, 9000, True, b"\x00second", 0x1234, 0.0)
        lost = header(sink.packets[1])[2]
        feed.on_nack(track, [lost, (lost + 100) & 0xFFFF])  # the second was never sent
        rtx = sink.packets[2:]
        assert len(rtx) == 1 and track.retransmits == 1
        pt, _, _, ts, ssrc = header(rtx[0])
        assert (pt, ssrc, ts) == (121, 0xBBBB, header(sink.packets[1])[3])
        # RFC 4588 §4: original sequence number, then the original payload.
        assert rtx[0][12:14] == lost.to_bytes(2, "big") and rtx[0][14:] == b"\x00second"

    asyncio.run(scenario())


def test_keyframe_requests_are_coalesced() -> None:
    async def scenario() -> None:
        clock, sent, feed = clocked_feed(100.0)
        feed.on_rtp(96, 1, 0, True, KEY, 0x77, clock[0])
        feed.request_keyframe()
        feed.request_keyframe()
        assert sent == [0x77]  # the second is within PLI_INTERVAL: deferred, not dropped
        await asyncio.sleep(PLI_INTERVAL + 0.05)
        clock[0] += PLI_INTERVAL + 0.05
        assert sent == [0x77, 0x77]
        assert feed.keyframe_requests == 2

    asyncio.run(scenario())


def test_sender_reports_follow_the_publisher_clock() -> None:
    async def scenario() -> None:
        stream = Stream("sync")
        reports: dict[str, tuple[int, int]] = {}
        for kind, clock_rate, codec in (("video", 90000, VP8_PUB), ("audio", 48000, None)):
            feed = stream.feeds[kind]
            codecs = codec or [CodecSpec(111, "audio/opus", 48000, 2)]
            feed.attach_source(codecs, lambda ssrc: None)
            view = VP8_VIEW if kind == "video" else [CodecSpec(109, "audio/opus", 48000, 2)]
            track = DownTrack(
                kind=kind,
                ssrc=1,
                rtx_ssrc=2,
                codecs=view,
                send=Sink(),
                request_keyframe=lambda: None,
            )

            def report(ntp: int, rtp: int, packets: int, octets: int, kind: str = kind) -> None:
                reports[kind] = (ntp, rtp)

            stream.subscribe(object(), kind, track, report)
            pt = codecs[0].payload_type
            feed.on_rtp(pt, 1, 1000, True, KEY, 0x99, 50.0)
            # Publisher SR: its NTP 3_900_000_000.0 s is its RTP timestamp 1000.
            feed.on_sender_report(seconds_to_ntp(3_900_000_000.0), 1000, 50.0)
            assert clock_rate == feed.clock_rate
        stream.refresh_sender_reports(52.0)  # two seconds later
        for kind, clock_rate in (("video", 90000), ("audio", 48000)):
            ntp, rtp = reports[kind]
            assert abs(ntp_to_seconds(ntp) - 3_900_000_002.0) < 1e-6
            (offset,) = [
                sub.downtracks[kind][0].ts_off
                for sub in stream.subscriptions.values()
                if kind in sub.downtracks
            ]
            assert (rtp - offset - 1000) & 0xFFFFFFFF == 2 * clock_rate
        stream.close()

    asyncio.run(scenario())


def test_duplicate_packet_is_forwarded_once() -> None:
    async def scenario() -> None:
        sink = Sink()
        feed = TrackFeed("video", now=lambda: 0.0)
        feed.attach_source(VP8_PUB, lambda ssrc: None)
        feed.add(downtrack(sink))
        feed.on_rtp(96, 10, 0, True, KEY, 0x1, 0.0)
        feed.on_rtp(96, 11, 3000, True, DELTA, 0x1, 0.03)
        feed.on_rtp(96, 11, 3000, True, DELTA, 0x1, 0.04)  # e.g. late original after RTX
        assert len(sink.packets) == 2 and feed.packets == 2

    asyncio.run(scenario())


def test_waiting_viewer_starts_from_the_cached_keyframe() -> None:
    async def scenario() -> None:
        sink = Sink()
        feed = TrackFeed("video")
        feed.attach_source(VP8_PUB, lambda ssrc: None)  # a publisher that ignores PLI
        loop = asyncio.get_running_loop()
        feed.on_rtp(96, 100, 0, True, DELTA, 0x5, loop.time())  # before any keyframe
        feed.on_rtp(96, 101, 3000, False, KEY, 0x5, loop.time())
        feed.on_rtp(96, 102, 3000, True, b"\x00kf-end", 0x5, loop.time())
        feed.on_rtp(96, 103, 6000, True, DELTA, 0x5, loop.time())
        feed.on_rtp(96, 104, 9000, True, DELTA, 0x5, loop.time())
        track = downtrack(sink)
        feed.add(track)
        await asyncio.sleep(REPLAY_AFTER + 0.1)  # the replay timer's delay
        assert track.synced and feed.replays == 1
        sent = [header(p) for p in sink.packets]
        assert [h[2] for h in sent] == [(sent[0][2] + i) & 0xFFFF for i in range(4)]
        stamps = [h[3] for h in sent]
        # Frames 3000, 6000, 9000 pulled together 1 ms apart, the newest in its true place.
        assert [(t - stamps[-1]) & 0xFFFFFFFF for t in stamps] == [
            (-180) & 0xFFFFFFFF,
            (-180) & 0xFFFFFFFF,
            (-90) & 0xFFFFFFFF,
            0,
        ]
        assert sink.packets[0].endswith(KEY)
        feed.on_rtp(96, 105, 12000, True, DELTA, 0x5, loop.time())  # live again
        live = header(sink.packets[-1])
        assert live[2] == (sent[-1][2] + 1) & 0xFFFF
        assert (live[3] - stamps[-1]) & 0xFFFFFFFF == 3000

    asyncio.run(scenario())


def test_viewer_of_a_publisher_ignoring_pli_starts_from_the_cache_at_once() -> None:
    async def scenario() -> None:
        clock, sent, feed = clocked_feed(50.0)
        feed.on_rtp(96, 1, 0, True, KEY, 0x5, clock[0])
        feed.on_rtp(96, 2, 3000, True, DELTA, 0x5, clock[0] + 0.03)
        first = downtrack(Sink())
        feed.add(first)  # asks; how fast the publisher answers is not known: it waits
        assert sent == [0x5] and not first.synced and feed.replays == 0
        assert feed.pli_answer_s is None and not feed.pli_ignored
        clock[0] += PLI_ANSWER_LIMIT + 0.01
        feed.on_rtp(96, 3, 6000, True, DELTA, 0x5, clock[0])  # no keyframe came
        clock[0] += PLI_INTERVAL
        sink = Sink()
        late = downtrack(sink)
        feed.add(late)
        assert feed.pli_ignored and late.synced and feed.replays == 1  # no wait at all
        assert len(sink.packets) == 3 and sink.packets[0].endswith(KEY)

    asyncio.run(scenario())


def test_viewer_of_a_publisher_answering_pli_waits_for_the_fresh_keyframe() -> None:
    async def scenario() -> None:
        clock, sent, feed = clocked_feed(50.0)
        feed.on_rtp(96, 1, 0, True, KEY, 0x5, clock[0])
        feed.add(downtrack(Sink()))
        clock[0] += 0.04
        feed.on_rtp(96, 2, 3600, True, KEY, 0x5, clock[0])  # the answer, 40 ms later
        assert feed.pli_answer_s is not None and abs(feed.pli_answer_s - 0.04) < 1e-9
        assert not feed.pli_ignored
        clock[0] += PLI_INTERVAL
        waiting = downtrack(Sink())
        feed.add(waiting)  # asked at once: its keyframe is 40 ms away, so no replay
        assert len(sent) == 2 and not waiting.synced and feed.replays == 0
        clock[0] += 0.01
        coalesced = downtrack(Sink())
        feed.add(coalesced)  # its request waits ~0.5 s: start from the cache instead
        assert len(sent) == 2 and coalesced.synced and feed.replays == 1
        clock[0] += 0.03
        feed.on_rtp(96, 3, 7200, True, KEY, 0x5, clock[0])
        assert waiting.synced

    asyncio.run(scenario())


def test_cache_is_dropped_when_the_publisher_leaves() -> None:
    async def scenario() -> None:
        feed = TrackFeed("video")
        feed.attach_source(VP8_PUB, lambda ssrc: None)
        loop = asyncio.get_running_loop()
        feed.on_rtp(96, 1, 0, True, KEY, 0x5, loop.time())
        feed.on_rtp(96, 2, 3000, True, DELTA, 0x5, loop.time())
        assert feed.gop
        feed.detach_source()
        sink = Sink()
        feed.add(downtrack(sink))
        await asyncio.sleep(REPLAY_AFTER + 0.1)
        assert sink.packets == [] and feed.replays == 0

    asyncio.run(scenario())


def test_gop_longer_than_the_cache_is_not_replayed() -> None:
    feed = TrackFeed("video", now=lambda: 0.0)
    feed.attach_source(VP8_PUB, lambda ssrc: None)
    feed.on_rtp(96, 1, 0, True, KEY, 0x5, 0.0)
    big = b"\x00" + bytes(1200)
    for seq in range(2, 2 + GOP_CACHE_BYTES // 1200 + 2):
        feed.on_rtp(96, seq & 0xFFFF, seq * 3000, True, big, 0x5, 0.0)
    assert feed.gop is None


def test_viewer_picture_loss_reaches_the_publisher_rate_limited() -> None:
    async def scenario() -> None:
        clock, sent, feed = clocked_feed(10.0)
        track = DownTrack(
            kind="video",
            ssrc=1,
            rtx_ssrc=2,
            codecs=VP8_VIEW,
            send=Sink(),
            request_keyframe=feed.request_keyframe,
        )
        feed.add(track)  # joining asks nothing yet: no packet has named the publisher SSRC
        feed.on_rtp(96, 1, 0, True, KEY, 0x42, clock[0])
        track.on_picture_loss()  # the viewer's PLI/FIR (RFC 4585 §6.3.1)
        track.on_picture_loss()  # within PLI_INTERVAL: coalesced into a deferred one
        assert sent == [0x42] and track.plis == 2

    asyncio.run(scenario())
