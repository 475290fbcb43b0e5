"""A WHEP session: one viewer's peer connection, fed by its stream's forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from aiortc import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

from broadcast.media import aiortc_glue as glue
from broadcast.media import sender_glue
from broadcast.media.session import Role, Session, codec_specs
from broadcast.protocol.rtp import abs_send_time, abs_send_time_bytes
from broadcast.sfu.abr import AbrPolicy, Feedback, Layer
from broadcast.sfu.downtrack import DownTrack

__all__ = ["ABS_SEND_TIME_URI", "ViewerSession"]

ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
PAD_INTERVAL = 0.02  # seconds between padding bursts while probing
PAD_BURST = 0.1  # at most this many seconds of padding owed at once


class ViewerSession(Session):
    role: Role = "whep"

    def __init__(
        self,
        *args: Any,
        layer: str | None = None,
        on_switch: Callable[[str], None] = lambda reason: None,
        relay_layers: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.layer = layer  # the simulcast rid asked for; None: the highest
        # An edge's upstream (media/relay.py): its video sections carry one simulcast layer
        # each, in the stream's layer order, so the edge can choose layers for its viewers.
        self.relay_layers = relay_layers
        self._on_switch = on_switch  # told "down", "up" or "viewer" at each layer change
        self.downtracks: dict[str, DownTrack] = {}
        self._senders: dict[str, RTCRtpSender] = {}
        self._rate_samples: dict[str, tuple[float, int]] = {}
        self._connected_wall = time.monotonic()
        self.abr = AbrPolicy()
        self._padding: asyncio.Task[None] | None = None
        self._report_mark = (0, 0)  # (packets, plis) of the video downtrack at the last RR

    def _tracks(self) -> list[tuple[str, Any, str | None]]:
        """(key, transceiver, pinned layer) per media section we send: keys are the kind,
        then `video1`, `video2`... for an edge's further video sections, one per layer."""
        out: list[tuple[str, Any, str | None]] = []
        seen: dict[str, int] = {}
        rids = list(self.stream.layers)
        for transceiver in self.pc.getTransceivers():
            kind = transceiver.kind
            if kind not in self.stream.feeds:
                continue
            index = seen[kind] = seen.get(kind, -1) + 1
            if index and not (kind == "video" and self.relay_layers):
                continue
            key = kind if index == 0 else f"{kind}{index}"
            layer = self.layer
            if kind == "video" and self.relay_layers and rids:
                layer = rids[min(index, len(rids) - 1)]
            out.append((key, transceiver, layer))
        return out

    def prepare(self) -> None:
        keys = {id(transceiver): key for key, transceiver, _ in self._tracks()}
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind not in self.stream.feeds:
                continue
            sender = self.pc.addTrack(glue.ParkedTrack(transceiver.kind))
            # One MediaStream for all tracks (msid), named after the stream.
            sender._stream_id = self.stream.name
            # WHEP: the answer is sendonly even to a sendrecv offer.
            transceiver.direction = "sendonly"
            key = keys.get(id(transceiver))
            if key is not None:
                sender_glue.tap_sender(sender, partial(self._on_rtcp, key))

    def on_connected(self) -> None:
        if self.ended:
            return
        if self.stream.data is not None:  # mirrors of the publisher's data channels
            self.stream.data.attach_viewer(self, self.pc)
        for key, transceiver, layer in self._tracks():
            kind = transceiver.kind
            sink = sender_glue.rtp_sink(transceiver.sender.transport)
            if sink is None:
                self.end("transport not usable after connecting")
                return
            feed = self.stream.feeds[kind]
            sender = transceiver.sender
            extensions = glue.transceiver_extensions(transceiver)
            downtrack = DownTrack(
                kind=kind,
                ssrc=sender._ssrc,
                rtx_ssrc=sender._rtx_ssrc,
                codecs=codec_specs(transceiver),
                send=sink,
                request_keyframe=feed.request_keyframe,
                abs_send_time_id=extensions.get(ABS_SEND_TIME_URI),
            )
            self.downtracks[key] = downtrack
            self._senders[key] = sender
            report = partial(sender_glue.feed_sender_report, sender)
            viewer: object = self if key == kind else (self, key)
            if key == "video" and self.relay_layers:
                self.layer = layer  # pinned: no automatic choice for an edge
            self.stream.subscribe(viewer, kind, downtrack, report, layer=layer)
        self._connected_wall = time.monotonic()

    def set_layer(self, rid: str | None) -> None:
        """Receive this simulcast layer (None: the highest), from its next keyframe on.

        A rid the publisher does not send (now) falls back to the highest layer.
        """
        self.layer = rid
        self._on_switch("viewer")
        self.stream.select_layer(self, rid)

    def _on_rtcp(self, kind: str, packet: Any) -> None:
        downtrack = self.downtracks.get(kind)
        if downtrack is None:
            return
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            if downtrack.source is not None:
                downtrack.source.on_nack(downtrack, packet.lost)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            downtrack.on_picture_loss()
        elif isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            for report in packet.reports:
                if report.ssrc == downtrack.ssrc:
                    downtrack.on_receiver_report(
                        report.fraction_lost, report.packets_lost, report.jitter
                    )
                    # This report's own round trip: aiortc's is smoothed over many, which
                    # would keep a drained queue visible for seconds.
                    rtt = sender_glue.report_round_trip_time(
                        self._senders[kind], report.lsr, report.dlsr
                    )
                    if rtt is not None:
                        downtrack.rtt = rtt
                    if kind == "video":
                        self._adapt(
                            loss=report.fraction_lost / 256, rtt=rtt, **self._since(downtrack)
                        )
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            # Other application feedback than REMB, or a REMB too short to unpack.
            with contextlib.suppress(ValueError, struct.error):
                bitrate, _ = unpack_remb_fci(packet.fci)
                self._adapt(remb=bitrate)

    def _since(self, video: DownTrack) -> dict[str, Any]:
        """NACKed share and PLIs since the previous receiver report, for the ABR policy."""
        packets, plis = self._report_mark
        self._report_mark = (video.packets, video.plis)
        sent = video.packets - packets
        nacked = len(video.nacked)
        video.nacked.clear()
        return {"nacked": min(1.0, nacked / sent) if sent else None, "plis": video.plis - plis}

    def _adapt(self, **feedback: Any) -> None:
        """Automatic layer choice while the viewer pinned none: the ABR policy over this
        viewer's receiver reports and REMB (sfu/abr.py), applied at the layer's keyframe."""
        video = self.downtracks.get("video")
        if self.layer is not None or len(self.stream.layers) < 2 or video is None:
            return
        now = asyncio.get_event_loop().time()
        layers = [
            Layer(rid, feed.rate_bps(now), feed.sending(now), _pixels(feed.dimensions))
            for rid, feed in self.stream.layers.items()
        ]
        if not any(layer.active for layer in layers):
            return
        current = video.source.rid if video.source is not None else None
        self.abr.can_probe = any(rtx is not None for _, rtx in video.pt_map.values())
        choice = self.abr.update(Feedback(now=now, **feedback), layers, current)
        if choice != current:
            self._on_switch("up" if self.abr.last_switch_up else "down")
            self.stream.select_layer(self, choice)
        if self.abr.padding_bps and self._padding is None:
            self._padding = asyncio.ensure_future(self._pad(video))

    async def _pad(self, video: DownTrack) -> None:
        """Send the ABR probe's padding until the probe ends (sfu/abr.py)."""
        loop = asyncio.get_running_loop()
        last, owed = loop.time(), 0.0
        try:
            while not self.ended and self.abr.padding_bps:
                await asyncio.sleep(PAD_INTERVAL)
                now = loop.time()
                rate = self.abr.padding_bps / 8
                owed = min(owed + rate * (now - last), rate * PAD_BURST)
                last = now
                sent = video.pad(int(owed), abs_send_time_bytes(abs_send_time(now)))
                owed = owed - sent if sent else 0.0
        finally:
            self._padding = None

    def on_end(self) -> None:
        if self._padding is not None:
            self._padding.cancel()
        if self.stream.data is not None:
            self.stream.data.detach_viewer(self)
        self.stream.unsubscribe(self)
        for key, downtrack in self.downtracks.items():
            if key != downtrack.kind:
                self.stream.unsubscribe((self, key))
        for downtrack in self.downtracks.values():
            downtrack.send = _discard

    def stats(self) -> dict[str, object]:
        base = super().stats()
        now = time.monotonic()
        tracks: dict[str, object] = {}
        for kind, d in self.downtracks.items():
            then, octets = self._rate_samples.get(kind, (self._connected_wall, 0))
            self._rate_samples[kind] = (now, d.octets)
            elapsed = now - then
            rtt = sender_glue.sender_round_trip_time(self._senders[kind])
            track: dict[str, object] = {
                "packets": d.packets,
                "bytes": d.octets,
                "bitrate_bps": round((d.octets - octets) * 8 / elapsed) if elapsed > 0 else 0,
                "fraction_lost": d.fraction_lost,
                "packets_lost": d.packets_lost,
                "jitter_s": d.jitter,
                "rtt_s": rtt,
                "retransmits": d.retransmits,
                "nacks": d.nacks,
                "plis": d.plis,
                "padding_bytes": d.padding_octets,
                "synced": d.synced,
                "layer": None if d.source is None else d.source.rid,
            }
            tracks[kind] = track
            if kind == "video":
                # The ABR policy's bandwidth estimate for this viewer (None until RTCP).
                estimate = self.abr.estimate
                track["estimate_bps"] = None if estimate is None else round(estimate)
        base["tracks"] = tracks
        return base


def _pixels(dimensions: tuple[int, int] | None) -> int:
    return 0 if dimensions is None else dimensions[0] * dimensions[1]


def _discard(data: bytes) -> None:
    return None
