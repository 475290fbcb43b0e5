"""A WHIP session: the publisher's peer connection feeding its stream's tracks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiortc.rtp import RtcpSrPacket, RtpPacket

from broadcast.media import aiortc_glue as glue
from broadcast.media.session import Role, Session, codec_specs
from broadcast.protocol.simulcast import Simulcast, add_answer_lines
from broadcast.protocol.start_bitrate import add_start_bitrate
from broadcast.sfu.feed import TrackFeed
from broadcast.tasks import spawn

__all__ = ["SILENCE_TIMEOUT", "PublisherSession"]

# A publisher that has sent nothing for this long may be replaced by a new one.
SILENCE_TIMEOUT = 5.0


class PublisherSession(Session):
    role: Role = "whip"

    def __init__(
        self,
        *args: Any,
        simulcast: dict[int, Simulcast] | None = None,
        start_bitrate: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.start_bitrate = start_bitrate  # bit/s hinted in the answer (0: none)
        self.last_packet_at: float | None = None
        # Simulcast per m-line index: as offered, then as accepted in prepare().
        self.simulcast: dict[int, Simulcast] = dict(simulcast or {})
        if self.stream.data is not None:  # its data channels, as it opens them
            self.stream.data.attach_publisher(self.pc)

    def prepare(self) -> None:
        accepted = glue.negotiate_rid_extensions(self.pc, self.simulcast.keys())
        self.simulcast = {i: s for i, s in self.simulcast.items() if i in accepted}
        for transceiver in self.pc.getTransceivers():
            kind = transceiver.kind
            if kind not in self.stream.feeds:
                continue
            layers: tuple[str, ...] = ()
            feeds: dict[str | None, TrackFeed] = {None: self.stream.feeds[kind]}
            if kind == "video":
                index = glue.mline_index(transceiver)
                simulcast = None if index is None else self.simulcast.get(index)
                layers = simulcast.layers if simulcast is not None else ()
                feeds.update(self.stream.set_layers(layers))
            self.feed_from(transceiver, feeds, layers)

    def feed_from(
        self, transceiver: Any, feeds: dict[str | None, TrackFeed], layers: tuple[str, ...] = ()
    ) -> None:
        """Tap `transceiver`'s receiver into `feeds` (by rid; None: without simulcast) and
        have each feed it sends to ask that receiver for keyframes."""
        receiver = transceiver.receiver
        loop = asyncio.get_event_loop()
        glue.tap_receiver(
            receiver, self._rtp_handler(feeds), self._report_handler(feeds, loop), layers
        )
        codecs = codec_specs(transceiver)

        def request_keyframe(ssrc: int) -> None:
            spawn(glue.request_keyframe(receiver, ssrc))

        for rid, feed in feeds.items():
            if rid is not None or not layers:
                feed.attach_source(codecs, request_keyframe)

    def finish_answer(self, answer: str) -> str:
        return add_start_bitrate(add_answer_lines(answer, self.simulcast), self.start_bitrate)

    def _rtp_handler(
        self, feeds: dict[str | None, TrackFeed]
    ) -> Callable[[RtpPacket, str | None, float], None]:
        stream = self.stream

        def on_rtp(packet: RtpPacket, rid: str | None, now: float) -> None:
            if stream.publisher is not self:
                return
            feed = feeds.get(rid)
            if feed is None:
                return
            self.last_packet_at = now
            feed.on_rtp(
                packet.payload_type,
                packet.sequence_number,
                packet.timestamp,
                bool(packet.marker),
                packet.payload,
                packet.ssrc,
                now,
            )

        return on_rtp

    def _report_handler(
        self, feeds: dict[str | None, TrackFeed], loop: asyncio.AbstractEventLoop
    ) -> Callable[[RtcpSrPacket, str | None], None]:
        def on_sender_report(packet: RtcpSrPacket, rid: str | None) -> None:
            feed = feeds.get(rid)
            if self.stream.publisher is self and feed is not None:
                info = packet.sender_info
                feed.on_sender_report(info.ntp_timestamp, info.rtp_timestamp, loop.time())

        return on_sender_report

    def silent(self, now: float, connect_timeout: float) -> bool:
        """Gone quiet: connected but no RTP lately, or never connected in time."""
        if self.connected_at is None:
            return now - self.created_loop_time > connect_timeout
        last = self.last_packet_at or self.connected_at
        return now - last > SILENCE_TIMEOUT

    def decoders_started(self) -> int:
        return sum(glue.decoder_started(t.receiver) for t in self.pc.getTransceivers())

    def on_end(self) -> None:
        if self.stream.data is not None:
            self.stream.data.detach_publisher(self.pc)
        if self.stream.publisher is self:
            self.stream.set_publisher(None)
