"""Data-channel fan-out for one stream: the publisher's channels mirrored on every viewer.

Each channel the publisher opens in-band (RFC 8832 DCEP) is mirrored by a channel the
server opens on each viewer's peer connection, with the same label, protocol and
reliability (RFC 8831 §6.1); messages keep their type, string or binary (RFC 8831 §6.6).
Viewers only have an SCTP association if their offer had an m=application section
(RFC 8841); the others are skipped.

A publisher that goes away leaves its viewers' mirrors open for `grace` seconds: a
publisher that reconnects within that time and opens a channel with the same label and
options feeds the same mirrors, so viewers keep one channel. Other options close the old
mirrors and open new ones; after the grace period the mirrors close.

Messages are dropped, and counted in `dropped` by reason: "size" (over
`max_message_bytes`, or over the viewer's a=max-message-size, RFC 8841 §6), "rate" (the
sender's token bucket is empty), "buffer" (a viewer's mirror has over `buffer_bytes`
queued), "viewer_disallowed" (a viewer sent while `viewer_messages` is off) and
"no_publisher" (a viewer sent while the publisher's channel is gone). A reliable mirror
never loses a message: where one would be dropped, the mirror is closed for that viewer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiortc import RTCDataChannel, RTCPeerConnection

from broadcast.bucket import TokenBucket

__all__ = ["DROP_REASONS", "GRACE", "MAX_CHANNELS", "DataChannelHub", "TokenBucket"]

logger = logging.getLogger(__name__)

DROP_REASONS = ("size", "rate", "buffer", "viewer_disallowed", "no_publisher")
GRACE = 10.0  # seconds a gone publisher's mirrors wait for it to come back
MAX_CHANNELS = 64  # channels mirrored per stream; a publisher's further ones are closed

Message = str | bytes
Options = tuple[str, bool, int | None, int | None]  # protocol, ordered, rexmit, lifetime


def _options(channel: RTCDataChannel) -> Options:
    return (channel.protocol, channel.ordered, channel.maxRetransmits, channel.maxPacketLifeTime)


def _size(message: Message) -> int:
    return len(message.encode()) if isinstance(message, str) else len(message)


@dataclass(eq=False)
class _Mirror:
    channel: RTCDataChannel
    # aiortc refuses send() until the DATA_CHANNEL_ACK (RFC 8832 §6 would allow it), so
    # messages wait here meanwhile, counted against the same buffer_bytes.
    pending: list[Message] = field(default_factory=list)
    pending_bytes: int = 0


@dataclass(eq=False)
class _Channel:
    label: str
    options: Options
    source: RTCDataChannel | None = None  # the publisher's channel; None: in grace
    owner: RTCPeerConnection | None = None
    mirrors: dict[object, _Mirror] = field(default_factory=dict)
    messages: int = 0
    bytes: int = 0
    expiry: asyncio.TimerHandle | None = None
    warned: bool = False  # about a slow viewer: once per channel, not once per viewer

    @property
    def reliable(self) -> bool:
        # RFC 8831 §6.1: reliable unless a retransmission or lifetime limit is set; an
        # unordered reliable channel still promises every message.
        return self.options[2] is None and self.options[3] is None


@dataclass(eq=False)
class _Sender:
    pc: RTCPeerConnection
    bucket: TokenBucket


class DataChannelHub:
    """One stream's data channels: publisher → every viewer, and viewer → publisher."""

    def __init__(
        self,
        *,
        max_message_bytes: int,
        rate: float,
        burst: int,
        viewer_messages: bool,
        buffer_bytes: int,
        grace: float = GRACE,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.rate = rate
        self.burst = burst
        self.viewer_messages = viewer_messages
        self.buffer_bytes = buffer_bytes
        self.grace = grace
        self.messages_in = 0
        self.messages_out = 0
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._channels: dict[str, _Channel] = {}
        self._publishers: dict[RTCPeerConnection, _Sender] = {}
        self._viewers: dict[object, _Sender] = {}

    def _bucket(self) -> TokenBucket:
        return TokenBucket(self.rate, self.burst, asyncio.get_running_loop().time())

    # -- publisher side -------------------------------------------------------------------

    def attach_publisher(self, pc: RTCPeerConnection) -> None:
        """Mirror the channels `pc`'s peer opens; call before negotiating. An edge's
        upstream WHEP session is attached the same way (its peer is the origin)."""
        if pc in self._publishers:
            return
        sender = self._publishers[pc] = _Sender(pc, self._bucket())

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if self._publishers.get(pc) is sender:
                self._publisher_channel(sender, channel)

    def detach_publisher(self, pc: RTCPeerConnection) -> None:
        """The publisher is gone: its channels' mirrors wait `grace` seconds for it."""
        if self._publishers.pop(pc, None) is None:
            return
        for record in list(self._channels.values()):
            if record.owner is pc:
                self._orphan(record)

    def _publisher_channel(self, sender: _Sender, channel: RTCDataChannel) -> None:
        label, options = channel.label, _options(channel)
        record = self._channels.get(label)
        if record is not None and record.options != options:
            self._close(record)
            record = None
        if record is None:
            if len(self._channels) >= MAX_CHANNELS:
                logger.warning("data channel %r refused: over %d channels", label, MAX_CHANNELS)
                channel.close()
                return
            record = self._channels[label] = _Channel(label, options)
            for key, viewer in self._viewers.items():
                self._open_mirror(record, key, viewer)
        if record.expiry is not None:
            record.expiry.cancel()
            record.expiry = None
        # A second channel with a label already live takes over from the first one.
        record.source, record.owner = channel, sender.pc
        bound = record

        @channel.on("message")
        def on_message(message: Message) -> None:
            if bound.source is channel:
                self._from_publisher(bound, sender.bucket, message)

        @channel.on("close")
        def on_close() -> None:
            if bound.source is channel:
                self._orphan(bound)

    def _orphan(self, record: _Channel) -> None:
        record.source = record.owner = None
        if record.expiry is None:
            loop = asyncio.get_running_loop()
            record.expiry = loop.call_later(self.grace, self._expire, record)

    def _expire(self, record: _Channel) -> None:
        record.expiry = None
        if record.source is None and self._channels.get(record.label) is record:
            self._close(record)

    def _close(self, record: _Channel) -> None:
        record.source = record.owner = None
        if self._channels.get(record.label) is record:
            del self._channels[record.label]
        if record.expiry is not None:
            record.expiry.cancel()
            record.expiry = None
        for key in list(record.mirrors):
            self._close_mirror(record, key)

    def _from_publisher(self, record: _Channel, bucket: TokenBucket, message: Message) -> None:
        self.messages_in += 1
        size = _size(message)
        if size > self.max_message_bytes:
            self.dropped["size"] += 1
            return
        if not bucket.take(asyncio.get_running_loop().time()):
            self.dropped["rate"] += 1
            return
        record.messages += 1
        record.bytes += size
        for key, mirror in list(record.mirrors.items()):
            self._deliver(record, key, mirror, message, size)

    # -- viewer side ----------------------------------------------------------------------

    def attach_viewer(self, key: object, pc: RTCPeerConnection) -> None:
        """Open mirrors of the current channels on `pc`; call once it is connected.
        Channels the viewer opened itself are left alone."""
        self.detach_viewer(key)
        viewer = self._viewers[key] = _Sender(pc, self._bucket())
        for record in self._channels.values():
            self._open_mirror(record, key, viewer)

    def detach_viewer(self, key: object) -> None:
        if self._viewers.pop(key, None) is None:
            return
        for record in self._channels.values():
            self._close_mirror(record, key)

    def _open_mirror(self, record: _Channel, key: object, viewer: _Sender) -> None:
        pc = viewer.pc
        # No m=application in the viewer's offer: no SCTP, no data channels (RFC 8841).
        if pc.sctp is None or pc.connectionState == "closed":
            return
        protocol, ordered, max_retransmits, max_lifetime = record.options
        try:
            channel = pc.createDataChannel(
                record.label,
                maxPacketLifeTime=max_lifetime,
                maxRetransmits=max_retransmits,
                ordered=ordered,
                protocol=protocol,
            )
        except Exception as exc:
            logger.warning("data channel %r not mirrored to a viewer: %r", record.label, exc)
            return
        mirror = record.mirrors[key] = _Mirror(channel)

        @channel.on("open")
        def on_open() -> None:
            # Already counted against buffer_bytes while waiting: sent without a check.
            pending, mirror.pending, mirror.pending_bytes = mirror.pending, [], 0
            for message in pending:
                if record.mirrors.get(key) is mirror:
                    self._send(record, key, channel, message)

        @channel.on("message")
        def on_message(message: Message) -> None:
            if record.mirrors.get(key) is mirror:
                self._from_viewer(record, viewer, message)

        @channel.on("close")
        def on_close() -> None:
            if record.mirrors.get(key) is mirror:
                del record.mirrors[key]

    def _close_mirror(self, record: _Channel, key: object) -> None:
        mirror = record.mirrors.pop(key, None)
        if mirror is None:
            return
        mirror.pending.clear()
        try:
            mirror.channel.close()
        except Exception as exc:  # the viewer's transport is already gone
            logger.debug("closing a mirror of %r: %r", record.label, exc)

    def _deliver(
        self, record: _Channel, key: object, mirror: _Mirror, message: Message, size: int
    ) -> None:
        channel = mirror.channel
        state = channel.readyState
        if state == "connecting":
            if mirror.pending_bytes > self.buffer_bytes:
                self._overflow(record, key)
            else:
                mirror.pending.append(message)
                mirror.pending_bytes += size
            return
        if state != "open":
            return  # closing: its "close" event removes it
        if channel.bufferedAmount > self.buffer_bytes:
            self._overflow(record, key)
        else:
            self._send(record, key, channel, message)

    def _send(
        self, record: _Channel, key: object, channel: RTCDataChannel, message: Message
    ) -> None:
        try:
            channel.send(message)
        except ValueError:  # over the viewer's a=max-message-size (RFC 8841 §6)
            self.dropped["size"] += 1
            if record.reliable:
                self._close_mirror(record, key)
            return
        except Exception as exc:
            logger.debug("mirror of %r failed: %r", record.label, exc)
            self._close_mirror(record, key)
            return
        self.messages_out += 1

    def _overflow(self, record: _Channel, key: object) -> None:
        self.dropped["buffer"] += 1
        if record.reliable:
            if not record.warned:
                record.warned = True
                logger.warning(
                    "data channel %r closed for a viewer with over %d bytes queued"
                    " (reliable: messages are never dropped); further ones are counted only",
                    record.label,
                    self.buffer_bytes,
                )
            self._close_mirror(record, key)

    def _from_viewer(self, record: _Channel, viewer: _Sender, message: Message) -> None:
        self.messages_in += 1
        if not self.viewer_messages:
            self.dropped["viewer_disallowed"] += 1
            return
        size = _size(message)
        if size > self.max_message_bytes:
            self.dropped["size"] += 1
            return
        if not viewer.bucket.take(asyncio.get_running_loop().time()):
            self.dropped["rate"] += 1
            return
        source = record.source
        if source is None or source.readyState != "open":
            self.dropped["no_publisher"] += 1
            return
        # The publisher's channel is never closed for viewers' sake: theirs are dropped.
        if source.bufferedAmount > self.buffer_bytes:
            self.dropped["buffer"] += 1
            return
        try:
            source.send(message)
        except Exception as exc:
            logger.debug("viewer message on %r not sent: %r", record.label, exc)
            self.dropped["size" if isinstance(exc, ValueError) else "no_publisher"] += 1
            return
        self.messages_out += 1

    # -- whole stream ---------------------------------------------------------------------

    def close(self) -> None:
        """The stream ended: close every mirror and forget every peer."""
        for record in list(self._channels.values()):
            self._close(record)
        self._publishers.clear()
        self._viewers.clear()

    def stats(self) -> list[dict[str, object]]:
        return [
            {
                "label": record.label,
                "protocol": record.options[0],
                "ordered": record.options[1],
                "max_retransmits": record.options[2],
                "max_packet_lifetime": record.options[3],
                "publisher": record.source is not None,
                "viewers": sum(m.channel.readyState == "open" for m in record.mirrors.values()),
                "messages": record.messages,
                "bytes": record.bytes,
            }
            for record in self._channels.values()
        ]

    def describe(self) -> dict[str, object]:
        """For the stream API: the channels, and the messages in, out and dropped."""
        return {
            "channels": self.stats(),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "dropped": dict(self.dropped),
        }
