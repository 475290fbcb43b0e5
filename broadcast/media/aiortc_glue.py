"""Where broadcast reaches into aiortc and aioice internals (the viewer's sender side is in
sender_glue.py).

aiortc has no public API for encoded media (aiortc #449): its receiver always decodes
and its sender always encodes. A forwarding server needs the RTP before the jitter
buffer and must write rewritten RTP straight into a viewer's SRTP transport. The hooks
below do that; they are tested one by one in tests/test_aiortc_glue.py, and
pyproject pins aiortc to 1.16.x so an upgrade breaks here, loudly, and nowhere else.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

import aioice.ice
import aiortc.rtcrtpreceiver
import aiortc.rtp
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
)
from aiortc.codecs import CODECS
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcdtlstransport import RTCCertificate, SRTPProtectionProfile
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
)
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import RtcpSrPacket, RtpPacket, unwrap_rtx
from aiortc.sdp import SessionDescription
from OpenSSL import SSL

from broadcast.sfu.simulcast import RidDemux

__all__ = [
    "RID_EXTENSIONS",
    "LazyBitrateEstimator",
    "ParkedTrack",
    "SharedCertificate",
    "add_remote_candidate",
    "adopt_offered_h264_parameters",
    "defer_bitrate_estimators",
    "echo_offered_payload_types",
    "negotiate_rid_extensions",
    "new_peer_connection",
    "register_passthrough_codecs",
    "remote_ice_ufrag",
    "request_keyframe",
    "restrict_host_addresses",
    "shared_certificate",
    "tap_receiver",
]

logger = logging.getLogger(__name__)

# RFC 8852 §4.1-4.2: the rid of a media stream, and the rid an RTX stream repairs.
RID_EXTENSIONS = (
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
)

_VIDEO_FEEDBACK = [
    RTCRtcpFeedback(type="nack"),
    RTCRtcpFeedback(type="nack", parameter="pli"),
    RTCRtcpFeedback(type="ccm", parameter="fir"),
    RTCRtcpFeedback(type="goog-remb"),
]

# Codecs we forward but aiortc cannot decode or encode. aiortc only matches H.264
# constrained baseline (42001f/42e01f); OBS sends High (RFC 6184 §8.1 profile_idc 0x64).
# The level in these entries is irrelevant: adopt_offered_h264_parameters() copies the
# offerer's own profile-level-id into the answer.
_PASSTHROUGH_VIDEO: list[tuple[str, dict[str, str | int | None]]] = [
    ("video/H264", {"packetization-mode": "1", "profile-level-id": "4d001f"}),
    ("video/H264", {"packetization-mode": "1", "profile-level-id": "64001f"}),
    ("video/H264", {"packetization-mode": "1", "profile-level-id": "640c1f"}),
    ("video/VP9", {}),
    ("video/AV1", {}),
]

_registered = False


class LazyBitrateEstimator:
    """aiortc's REMB estimator (`RemoteBitrateEstimator`), built on its first packet.

    aiortc builds one for every video receiver, with two 1000-bucket rate windows: about
    95 KB and 0.7 ms of CPU per WHEP viewer, whose receiver never receives. A publisher's
    receiver gets its real estimator with its first packet.
    """

    __slots__ = ("_estimator",)

    def __init__(self) -> None:
        self._estimator: RemoteBitrateEstimator | None = None

    def add(
        self, arrival_time_ms: int, abs_send_time: int, payload_size: int, ssrc: int
    ) -> tuple[int, list[int]] | None:
        if self._estimator is None:
            self._estimator = RemoteBitrateEstimator()
        return self._estimator.add(arrival_time_ms, abs_send_time, payload_size, ssrc)


def defer_bitrate_estimators() -> None:
    """Make aiortc's receivers build their REMB estimator lazily (idempotent)."""
    aiortc.rtcrtpreceiver.RemoteBitrateEstimator = LazyBitrateEstimator  # type: ignore[attr-defined,assignment]


def echo_offered_payload_types() -> None:
    """Answer every codec with the payload type the offer gave it (RFC 3264 §6.1).

    aiortc does so only for 96-127 and answers any other number with its own, which can
    collide with the offer's: Chromium 156 numbers extra VP9/H.264/AV1 entries 35-63, and
    rejected the answer ("Duplicate payload type with conflicting codec name").
    """
    aiortc.rtp.DYNAMIC_PAYLOAD_TYPES = range(128)


def register_passthrough_codecs() -> None:
    """Teach aiortc's SDP negotiation the codecs we only forward (idempotent)."""
    global _registered
    if _registered:
        return
    video = CODECS["video"]
    used = {c.payloadType for c in video} | {c.payloadType for c in CODECS["audio"]}
    dynamic = (pt for pt in range(96, 128) if pt not in used)
    for mime, params in _PASSTHROUGH_VIDEO:
        pt = next(dynamic)
        rtx = next(dynamic)
        full = dict(params)
        if mime == "video/H264":
            full["level-asymmetry-allowed"] = "1"
        video.append(
            RTCRtpCodecParameters(
                mimeType=mime,
                clockRate=90000,
                payloadType=pt,
                rtcpFeedback=list(_VIDEO_FEEDBACK),
                parameters=full,
            )
        )
        video.append(
            RTCRtpCodecParameters(
                mimeType="video/rtx", clockRate=90000, payloadType=rtx, parameters={"apt": pt}
            )
        )
    for codec in video:
        if codec.mimeType.lower() != "video/rtx" and not any(
            fb.type == "ccm" for fb in codec.rtcpFeedback
        ):
            codec.rtcpFeedback.append(RTCRtcpFeedback(type="ccm", parameter="fir"))
    _registered = True


def restrict_host_addresses(addresses: list[str]) -> None:
    """Gather ICE host candidates only on these local addresses (empty: all interfaces).

    aioice has no such option and skips 127.0.0.1 on its own; this replaces its
    module-level address lookup.
    """
    original = _ORIGINAL_GET_HOST_ADDRESSES
    if not addresses:
        aioice.ice.get_host_addresses = original
        return
    chosen = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


_ORIGINAL_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses


class SharedCertificate(RTCCertificate):
    """One DTLS certificate, and one OpenSSL context per SRTP profile list, for every peer
    connection of this process, as Janus and mediasoup do. aiortc makes a key, certificate
    and context per connection: about 44 KB and 0.4 ms of CPU per viewer here. Peers
    verify the certificate by the fingerprint in the SDP (RFC 8827 §6.5), not by its
    subject, so sharing it reveals nothing a session did not already announce.
    """

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key=key, cert=cert)
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        names = tuple(p.openssl_profile for p in srtp_profiles)
        context = self._contexts.get(names)
        if context is None:
            context = self._contexts[names] = super()._create_ssl_context(srtp_profiles)
        return context


_shared_certificate: SharedCertificate | None = None


def shared_certificate() -> SharedCertificate:
    """This process's certificate, renewed a day before it expires (aiortc's last 30 days)."""
    global _shared_certificate
    renew_at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    if _shared_certificate is None or _shared_certificate.expires < renew_at:
        fresh: Any = RTCCertificate.generateCertificate()
        _shared_certificate = SharedCertificate(fresh._key, fresh._cert)
    return _shared_certificate


def new_peer_connection(
    ice_servers: list[RTCIceServer], *, max_bundle: bool = False
) -> RTCPeerConnection:
    """A peer connection that never contacts a public STUN server by default, with this
    process's shared DTLS certificate (set before any transport exists). `max_bundle`: one
    transport for every section we offer (RFC 9725 §4.4.1), which aiortc's default policy
    gives only to the first section of each kind."""
    policy = RTCBundlePolicy.MAX_BUNDLE if max_bundle else RTCBundlePolicy.BALANCED
    pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers), bundlePolicy=policy))
    pc._RTCPeerConnection__certificates = [shared_certificate()]  # type: ignore[attr-defined]
    return pc


def adopt_offered_h264_parameters(pc: RTCPeerConnection) -> None:
    """Answer H.264 with the offerer's own fmtp (profile and level) for each payload type.

    aiortc copies its local parameters into the answer; a forwarding server has no encoder
    or decoder, so the profile-level-id the publisher offered is exactly what we accept
    (RFC 6184 §8.2.2), and a viewer gets back what it said it can decode. Reads the offer
    aiortc parsed in setRemoteDescription (parsing SDP is a tenth of a join's CPU).
    """
    remote = _remote_description(pc)
    offered: dict[tuple[str | None, int | None], dict[str, Any]] = {}
    for media in remote.media:
        for codec in media.rtp.codecs:
            if codec.mimeType.lower() == "video/h264":
                offered[(media.rtp.muxId, codec.payloadType)] = dict(codec.parameters)
    for transceiver in pc.getTransceivers():
        for codec in transceiver._codecs:
            params = offered.get((transceiver.mid, codec.payloadType))
            if params is not None:
                codec.parameters = copy.deepcopy(params)


def _remote_description(pc: RTCPeerConnection) -> SessionDescription:
    """The offer as aiortc parsed it in setRemoteDescription (not parsed a second time)."""
    remote: SessionDescription = pc._RTCPeerConnection__pendingRemoteDescription  # type: ignore[attr-defined]
    return remote


def remote_ice_ufrag(pc: RTCPeerConnection) -> str | None:
    """The offer's ICE username fragment (RFC 8839 §5.4), to tell trickle from restart."""
    for media in _remote_description(pc).media:
        if media.ice is not None and media.ice.usernameFragment:
            return str(media.ice.usernameFragment)
    return None


def transceiver_codecs(transceiver: Any) -> list[RTCRtpCodecParameters]:
    """The codecs negotiated for a transceiver, with the remote side's payload types."""
    return list(transceiver._codecs)


def transceiver_extensions(transceiver: Any) -> dict[str, int]:
    """Negotiated RTP header extensions: URI -> id."""
    return {ext.uri: ext.id for ext in transceiver._headerExtensions}


async def add_remote_candidate(pc: RTCPeerConnection, candidate: Any) -> None:
    """Add a trickled candidate (or None: end of candidates) to every ICE transport.

    With BUNDLE all m-lines share one transport, whatever mid the client names
    (RFC 8843 §10.2); aiortc's addIceCandidate drops candidates for bundled mids.
    """
    transports: list[RTCIceTransport] = []
    for transceiver in pc.getTransceivers():
        ice = transceiver.receiver.transport.transport
        if ice not in transports:
            transports.append(ice)
    if pc.sctp is not None and pc.sctp.transport.transport not in transports:
        transports.append(pc.sctp.transport.transport)
    for ice in transports:
        if ice.state not in ("closed", "failed"):
            await ice.addRemoteCandidate(candidate)


class ParkedTrack(MediaStreamTrack):
    """A track that never yields: it makes the sender negotiate `sendonly` and then
    keeps aiortc's encoder loop asleep, because the forwarder writes RTP itself."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] | None = None

    async def recv(self) -> Any:
        self._never = asyncio.get_running_loop().create_future()
        await self._never
        raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------------
# Publisher side: take RTP before the jitter buffer; never start a decoder.
# ---------------------------------------------------------------------------------


def negotiate_rid_extensions(pc: RTCPeerConnection, mline_indexes: Collection[int]) -> set[int]:
    """Accept the offer's rid header extensions on these video m-lines (RFC 8852 §4).

    aiortc knows how to parse them (`HeaderExtensionsMap`) but not to negotiate them; only
    simulcast m-lines get them, so every other answer stays exactly as aiortc writes it.
    Call between setRemoteDescription and createAnswer. Returns the m-line indexes whose
    offer carried rtp-stream-id: only there can layers be told apart.
    """
    remote = _remote_description(pc)
    accepted: set[int] = set()
    for transceiver in pc.getTransceivers():
        index = mline_index(transceiver)
        if transceiver.kind != "video" or index is None or index not in mline_indexes:
            continue
        offered = remote.media[index].rtp.headerExtensions
        if not any(ext.uri == RID_EXTENSIONS[0] for ext in offered):
            continue
        have = {ext.uri for ext in transceiver._headerExtensions}
        for ext in offered:
            if ext.uri in RID_EXTENSIONS and ext.uri not in have:
                transceiver._headerExtensions.append(
                    RTCRtpHeaderExtensionParameters(id=ext.id, uri=ext.uri)
                )
        accepted.add(index)
    return accepted


def mline_index(transceiver: Any) -> int | None:
    """The transceiver's m-line index in the offer (aiortc keeps it private)."""
    index: int | None = transceiver._get_mline_index()
    return index


def tap_receiver(
    receiver: RTCRtpReceiver,
    on_rtp: Callable[[RtpPacket, str | None, float], None],
    on_sender_report: Callable[[RtcpSrPacket, str | None], None],
    layers: Sequence[str] = (),
) -> None:
    """Route a publisher receiver's RTP to `on_rtp` instead of depacketizing and decoding.

    Kept from aiortc: receiver statistics per SSRC (so RRs reach the publisher), RTX
    unwrapping, the REMB estimator (the publisher's bandwidth estimate depends on it, since
    we do not offer transport-cc). NACKs are generated per SSRC, so each simulcast layer
    has its own sequence space. Dropped: depayloading, jitter buffer, decoder thread.
    `receive()` is replaced so that the decoder thread is never started.

    With simulcast `layers` (rids), every packet is given to `on_rtp` with its layer's rid,
    learnt from the rid header extensions (RTX via repaired-rid); a packet of an SSRC not
    known yet is dropped. Without, the rid is always None.
    """
    r: Any = receiver
    loop = asyncio.get_event_loop()
    demux = RidDemux(layers) if layers else None
    nacks: dict[int, NackGenerator] = {}

    async def receive(parameters: Any) -> None:
        if r._RTCRtpReceiver__started:
            return
        for codec in parameters.codecs:
            r._RTCRtpReceiver__codecs[codec.payloadType] = codec
        for encoding in parameters.encodings:
            if encoding.rtx:
                r._RTCRtpReceiver__rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        r._RTCRtpReceiver__transport._register_rtp_receiver(r, parameters)
        r._RTCRtpReceiver__rtcp_task = asyncio.ensure_future(r._run_rtcp())
        r._RTCRtpReceiver__started = True

    async def handle_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
        estimator = r._RTCRtpReceiver__remote_bitrate_estimator
        if estimator is not None and packet.extensions.abs_send_time is not None:
            remb = estimator.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            if remb is not None:
                await _send_remb(r, remb)
        codecs = r._RTCRtpReceiver__codecs
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        streams = r._RTCRtpReceiver__remote_streams
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)
        extensions = packet.extensions
        if codec.mimeType.lower() == "video/rtx":
            if demux is None:
                original_ssrc = r._RTCRtpReceiver__rtx_ssrc.get(packet.ssrc)
            else:
                original_ssrc = demux.repaired(packet.ssrc, extensions.repaired_rtp_stream_id)
            apt = codec.parameters.get("apt")
            if original_ssrc is None or len(packet.payload) < 2 or apt not in codecs:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
        rid = None
        if demux is not None:
            rid = demux.media(packet.ssrc, extensions.rtp_stream_id)
            if rid is None:
                return
        if r._RTCRtpReceiver__nack_generator is not None:
            nack = nacks.get(packet.ssrc)
            if nack is None:
                nack = nacks[packet.ssrc] = NackGenerator()
            if nack.add(packet):
                await r._send_rtcp_nack(packet.ssrc, sorted(nack.missing))
        on_rtp(packet, rid, loop.time())

    original_rtcp = receiver._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        await original_rtcp(packet)
        if isinstance(packet, RtcpSrPacket):
            rid = None if demux is None else demux.layer_of(packet.ssrc)
            if demux is None or rid is not None:
                on_sender_report(packet, rid)

    r.receive = receive
    r._handle_rtp_packet = handle_rtp
    r._handle_rtcp_packet = handle_rtcp


async def _send_remb(receiver: Any, remb: tuple[int, list[int]]) -> None:
    from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

    rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc
    if rtcp_ssrc is not None:
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(*remb)
        )
        await receiver._send_rtcp(packet)


def decoder_started(receiver: RTCRtpReceiver) -> bool:
    """Whether aiortc started a decoder thread for this receiver (never, when tapped)."""
    r: Any = receiver
    return r._RTCRtpReceiver__decoder_thread is not None


async def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send a Picture Loss Indication to the publisher (RFC 4585 §6.3.1)."""
    await receiver._send_rtcp_pli(media_ssrc)
