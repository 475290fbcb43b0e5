"""A WHIP session: the publisher's peer connection feeding its stream's tracks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiortc.rtp import RtcpSrPacket, RtpPacket

from broadcast.media import aiortc_glue as glue
from broadcast.media.session import Role, Session, codec_specs
from broadcast.sfu.feed import TrackFeed
from broadcast.tasks import spawn

__all__ = ["SILENCE_TIMEOUT", "PublisherSession"]

# A publisher that has sent nothing for this long may be replaced by a new one.
SILENCE_TIMEOUT = 5.0


class PublisherSession(Session):
    role: Role = "whip"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_packet_at: float | None = None

    def prepare(self) -> None:
        loop = asyncio.get_event_loop()
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind not in self.stream.feeds:
                continue
            feed = self.stream.feeds[transceiver.kind]
            receiver = transceiver.receiver
            glue.tap_receiver(
                receiver, self._rtp_handler(feed, loop), self._report_handler(feed, loop)
            )
            codecs = codec_specs(transceiver)

            def request_keyframe(ssrc: int, receiver: Any = receiver) -> None:
                spawn(glue.request_keyframe(receiver, ssrc))

            feed.attach_source(codecs, request_keyframe)

    def _rtp_handler(
        self, feed: TrackFeed, loop: asyncio.AbstractEventLoop
    ) -> Callable[[RtpPacket, float], None]:
        stream = self.stream

        def on_rtp(packet: RtpPacket, now: float) -> None:
            if stream.publisher is not self:
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
        self, feed: TrackFeed, loop: asyncio.AbstractEventLoop
    ) -> Callable[[RtcpSrPacket], None]:
        def on_sender_report(packet: RtcpSrPacket) -> None:
            if self.stream.publisher is self:
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
        if self.stream.publisher is self:
            self.stream.set_publisher(None)
