"""Per-layer demux of simulcast RTP with literal packets: rid and repaired-rid (RFC 8852).

The publisher's tapped aiortc receiver is real (tests the hook in aiortc_glue); the
packets are built byte by byte and parsed by aiortc as they would be off the wire.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
)
from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    RtpPacket,
)

from broadcast.media import aiortc_glue as glue
from broadcast.sfu.simulcast import RidDemux

RID_ID, RRID_ID = 10, 11  # a=extmap ids, as Chromium 156 numbers them
H, L, H_RTX = 0x0B, 0x0C, 0x21  # SSRCs of layer h, layer l, and h's RTX stream
KEY = b"\x10\x00\x9d\x01\x2a"  # VP8 descriptor S=1, payload header P=0: keyframe

# Layer h, sequence 1, with rtp-stream-id "h": version 2 with X (0x90), PT 96, seq 1,
# ts 3000, SSRC 0x0b; RFC 8285 §4.2 one-byte header block 0xBEDE of one word:
# element id 10, length 1 (0xa0), "h", two bytes of padding.
H_FIRST = b"\x90\x60\x00\x01\x00\x00\x0b\xb8\x00\x00\x00\x0b\xbe\xde\x00\x01\xa0h\x00\x00" + KEY


def rtp(
    ssrc: int,
    seq: int,
    *,
    pt: int = 96,
    ext: dict[int, bytes] | None = None,
    payload: bytes = b"\x10\x01\x00\x00",
) -> bytes:
    header = struct.pack("!BBHII", 0x90 if ext else 0x80, pt, seq, seq * 3000, ssrc)
    if ext:
        elements = b"".join(bytes([i << 4 | len(v) - 1]) + v for i, v in ext.items())
        elements += bytes(-len(elements) % 4)
        header += b"\xbe\xde" + struct.pack("!H", len(elements) // 4) + elements
    return header + payload


@dataclass
class Tapped:
    receiver: Any
    extensions: HeaderExtensionsMap
    forwarded: list[tuple[str | None, int, int, int, bytes]] = field(default_factory=list)
    reports: list[tuple[str | None, int]] = field(default_factory=list)
    rtcp: list[Any] = field(default_factory=list)

    async def receive(self, data: bytes) -> None:
        packet = RtpPacket.parse(data, self.extensions)
        await self.receiver._handle_rtp_packet(packet, arrival_time_ms=0)

    def nacks(self) -> list[tuple[int, list[int]]]:
        return [
            (p.media_ssrc, list(p.lost))
            for p in self.rtcp
            if isinstance(p, RtcpRtpfbPacket) and p.fmt == RTCP_RTPFB_NACK
        ]


async def _tapped(layers: tuple[str, ...]) -> AsyncIterator[Tapped]:
    pc = RTCPeerConnection()
    receiver = pc.addTransceiver("video", direction="recvonly").receiver
    parameters = RTCRtpReceiveParameters(
        codecs=[
            RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96),
            RTCRtpCodecParameters(
                mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96}
            ),
        ],
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=RRID_ID, uri=glue.RID_EXTENSIONS[1]),
            RTCRtpHeaderExtensionParameters(id=RID_ID, uri=glue.RID_EXTENSIONS[0]),
        ],
        muxId="1",
    )
    extensions = HeaderExtensionsMap()
    extensions.configure(parameters)
    tapped = Tapped(receiver, extensions)
    glue.tap_receiver(
        receiver,
        lambda p, rid, now: tapped.forwarded.append(
            (rid, p.ssrc, p.sequence_number, p.payload_type, p.payload)
        ),
        lambda p, rid: tapped.reports.append((rid, p.ssrc)),
        layers,
    )
    await receiver.receive(parameters)
    receiver._set_rtcp_ssrc(1)

    async def capture(packet: Any) -> None:
        tapped.rtcp.append(packet)

    receiver._send_rtcp = capture
    yield tapped
    await pc.close()


@pytest.fixture
async def simulcast() -> AsyncIterator[Tapped]:
    async for tapped in _tapped(("h", "l")):
        yield tapped


@pytest.fixture
async def single() -> AsyncIterator[Tapped]:
    async for tapped in _tapped(()):
        yield tapped


def test_the_literal_packet_is_what_the_builder_makes() -> None:
    assert rtp(H, 1, ext={RID_ID: b"h"}, payload=KEY) == H_FIRST


async def test_layers_are_told_apart_by_rid_then_by_ssrc(simulcast: Tapped) -> None:
    await simulcast.receive(H_FIRST)
    await simulcast.receive(rtp(L, 500, ext={RID_ID: b"l"}))
    await simulcast.receive(rtp(H, 2))  # the rid is sent in the first packets only
    await simulcast.receive(rtp(L, 501))
    await simulcast.receive(rtp(0x0D, 7))  # an SSRC no rid named yet: not forwarded
    await simulcast.receive(rtp(0x0E, 8, ext={RID_ID: b"x"}))  # a rid not offered
    assert [f[:3] for f in simulcast.forwarded] == [
        ("h", H, 1),
        ("l", L, 500),
        ("h", H, 2),
        ("l", L, 501),
    ]
    assert simulcast.forwarded[0][4] == KEY
    assert simulcast.nacks() == []  # interleaved layers are not gaps in one another
    streams = simulcast.receiver._RTCRtpReceiver__remote_streams
    assert {H, L} <= set(streams) and streams[H].packets_received == 2


async def test_nacks_per_layer_and_rtx_unwrapped_by_repaired_rid(simulcast: Tapped) -> None:
    await simulcast.receive(H_FIRST)
    await simulcast.receive(rtp(L, 500, ext={RID_ID: b"l"}))
    await simulcast.receive(rtp(H, 4))
    await simulcast.receive(rtp(L, 501))
    assert simulcast.nacks() == [(H, [2, 3])]
    # RFC 4588 §4: the RTX payload starts with the original sequence number.
    await simulcast.receive(rtp(H_RTX, 90, pt=97, ext={RRID_ID: b"h"}, payload=b"\x00\x02" + KEY))
    await simulcast.receive(rtp(H_RTX, 91, pt=97, payload=b"\x00\x03\x10\x01\x00\x00"))
    await simulcast.receive(rtp(H_RTX, 92, pt=97, payload=b""))  # bandwidth probe padding
    assert [f[:4] for f in simulcast.forwarded[-2:]] == [("h", H, 2, 96), ("h", H, 3, 96)]
    assert simulcast.forwarded[-2][4] == KEY
    assert H_RTX in simulcast.receiver._RTCRtpReceiver__remote_streams


async def test_sender_reports_and_keyframe_requests_name_one_layer(simulcast: Tapped) -> None:
    await simulcast.receive(H_FIRST)
    await simulcast.receive(rtp(L, 500, ext={RID_ID: b"l"}))
    info = RtcpSenderInfo(
        ntp_timestamp=1 << 32, rtp_timestamp=9000, packet_count=1, octet_count=100
    )
    for ssrc in (L, 0x0D):
        await simulcast.receiver._handle_rtcp_packet(RtcpSrPacket(ssrc=ssrc, sender_info=info))
    assert simulcast.reports == [("l", L)]  # an SSRC of no known layer is not reported
    await glue.request_keyframe(simulcast.receiver, L)
    (pli,) = [p for p in simulcast.rtcp if isinstance(p, RtcpPsfbPacket)]
    assert (pli.fmt, pli.media_ssrc) == (RTCP_PSFB_PLI, L)


async def test_without_simulcast_every_packet_has_no_rid(single: Tapped) -> None:
    await single.receive(H_FIRST)
    await single.receive(rtp(H, 3))
    await single.receive(rtp(H_RTX, 1, pt=97, ext={RRID_ID: b"h"}, payload=b"\x00\x02" + KEY))
    # RTX needs an a=ssrc-group:FID here (none in this offer): not unwrapped.
    assert [f[:3] for f in single.forwarded] == [(None, H, 1), (None, H, 3)]
    assert single.nacks() == [(H, [2])]


def test_rid_demux_learns_and_relearns_ssrcs() -> None:
    demux = RidDemux(["h", "l"])
    assert demux.media(1, None) is None
    assert demux.media(1, "h") == "h" and demux.media(1, None) == "h"
    assert demux.repaired(9, None) is None
    assert demux.repaired(9, "h") == 1 and demux.repaired(9, None) == 1
    assert demux.media(2, "h") == "h"  # the encoder restarted layer h on a new SSRC
    assert demux.layer_of(1) is None and demux.repaired(9, None) == 2
    assert demux.media(3, "q") is None and demux.repaired(8, "l") is None
    assert demux.repaired(10, "h") == 2 and demux.repaired(9, None) is None  # h's new RTX
