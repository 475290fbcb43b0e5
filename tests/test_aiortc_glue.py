"""One test per hook into aiortc internals (broadcast/media/aiortc_glue.py, sender_glue.py).

If an aiortc upgrade moves one of these private names, this file fails first. The RTP tap
(`tap_receiver`) and the SRTP sink (`rtp_sink`) are exercised end to end by
tests/test_forwarding.py, which also asserts that no decoder thread is ever started.
"""

from __future__ import annotations

import asyncio
import datetime
import time

import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import CODECS
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcrtpsender import RTCRtpSender

from broadcast.media import aiortc_glue as glue
from broadcast.media import sender_glue


def test_passthrough_codecs_registered_once_with_rtx() -> None:
    glue.register_passthrough_codecs()
    before = len(CODECS["video"])
    glue.register_passthrough_codecs()
    assert len(CODECS["video"]) == before
    names = {(c.mimeType, c.parameters.get("profile-level-id")) for c in CODECS["video"]}
    for expected in [
        ("video/H264", "4d001f"),
        ("video/H264", "64001f"),
        ("video/H264", "640c1f"),
        ("video/VP9", None),
        ("video/AV1", None),
    ]:
        assert expected in names
    pts = [c.payloadType for c in CODECS["video"] + CODECS["audio"]]
    assert len(pts) == len(set(pts)), "payload types must be unique"
    apts = {c.parameters["apt"] for c in CODECS["video"] if c.mimeType == "video/rtx"}
    media = {c.payloadType for c in CODECS["video"] if c.mimeType != "video/rtx"}
    assert media <= apts, "every video codec has an RTX payload type"


def test_restrict_host_addresses_and_restore() -> None:
    glue.restrict_host_addresses(["127.0.0.1", "::1"])
    try:
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]
    finally:
        glue.restrict_host_addresses([])
    assert aioice.ice.get_host_addresses is glue._ORIGINAL_GET_HOST_ADDRESSES


async def _offer(profile_level_id: str) -> str:
    client = RTCPeerConnection()
    client.addTransceiver("video", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    sdp: str = client.localDescription.sdp
    await client.close()
    return sdp.replace("profile-level-id=42e01f", f"profile-level-id={profile_level_id}")


async def test_answer_echoes_the_offered_h264_level() -> None:
    glue.register_passthrough_codecs()
    offer = await _offer("640032")
    pc = glue.new_peer_connection([])
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    glue.adopt_offered_h264_parameters(pc)
    await pc.setLocalDescription(await pc.createAnswer())
    answer = pc.localDescription.sdp
    await pc.close()
    assert "profile-level-id=640032" in answer


async def test_new_peer_connection_uses_no_public_stun() -> None:
    pc = glue.new_peer_connection([])
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    assert "typ srflx" not in pc.localDescription.sdp
    await pc.close()


async def test_parked_track_never_yields() -> None:
    track = glue.ParkedTrack("video")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(track.recv(), 0.05)


async def test_sender_report_values_reach_aiortc_stats() -> None:
    pc = RTCPeerConnection()
    sender = pc.addTransceiver("video", direction="sendonly").sender
    assert isinstance(sender, RTCRtpSender)
    sender_glue.feed_sender_report(
        sender, ntp_timestamp=1 << 40, rtp_timestamp=90000, packets=7, octets=700
    )
    stats = [s for s in (await sender.getStats()).values() if s.type == "outbound-rtp"]
    assert (stats[0].packetsSent, stats[0].bytesSent) == (7, 700)
    assert sender_glue.sender_round_trip_time(sender) is None
    await pc.close()


async def test_each_report_block_gives_its_own_round_trip() -> None:
    pc = RTCPeerConnection()
    sender = pc.addTransceiver("video", direction="sendonly").sender
    assert sender_glue.report_round_trip_time(sender, 0x1234, 0) is None  # no SR sent yet
    # What aiortc records when it sends a sender report: its LSR value and the send time.
    sender._RTCRtpSender__lsr = 0x1234
    sender._RTCRtpSender__lsr_time = time.time() - 0.3
    rtt = sender_glue.report_round_trip_time(sender, 0x1234, 65536 // 10)  # held 0.1 s
    assert rtt == pytest.approx(0.2, abs=0.02)
    assert sender_glue.report_round_trip_time(sender, 0x9999, 0) is None  # another SR
    await pc.close()


async def test_rtp_sink_is_none_until_connected() -> None:
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver("video")
    assert sender_glue.rtp_sink(transceiver.sender.transport) is None
    await pc.close()


async def test_tap_sender_sees_rtcp_after_aiortc() -> None:
    from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

    pc = RTCPeerConnection()
    sender = pc.addTransceiver("video", direction="sendonly").sender
    seen: list[object] = []
    sender_glue.tap_sender(sender, seen.append)
    packet = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc)
    await sender._handle_rtcp_packet(packet)
    assert seen == [packet]
    await pc.close()


def test_srtp_protector_matches_pylibsrtp_and_drops_replays() -> None:
    import os
    import struct

    import pylibsrtp

    key = os.urandom(30)

    def session() -> pylibsrtp.Session:
        policy = pylibsrtp.Policy(
            key=key,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        )
        return pylibsrtp.Session(policy=policy)

    ours, theirs = sender_glue.srtp_protector(session()), session()
    packets = [struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 7) + bytes(1200) for seq in (1, 2)]
    for packet in packets:
        assert ours(packet) == theirs.protect(packet)
    assert ours(packets[0]) is None  # a sequence number already sent (RFC 3711 §3.3.2)
    assert ours(bytes(12) + bytes(1600)) is None  # larger than any MTU


def test_bitrate_estimator_is_built_on_the_first_packet() -> None:
    async def scenario() -> None:
        glue.defer_bitrate_estimators()
        pc = RTCPeerConnection()
        pc.addTransceiver("video")
        lazy = pc.getTransceivers()[0].receiver._RTCRtpReceiver__remote_bitrate_estimator
        assert isinstance(lazy, glue.LazyBitrateEstimator) and lazy._estimator is None
        real = RemoteBitrateEstimator()
        # 1200-byte packets every 5 ms for 4 s; abs-send-time is 6.18 fixed point seconds.
        answers = []
        for i in range(800):
            sent = (i * 5 * (1 << 18) // 1000) & 0xFFFFFF
            args = (10_000 + i * 5 + i % 7, sent, 1200, 0x1234)
            answers.append((lazy.add(*args), real.add(*args)))
        assert all(a == b for a, b in answers) and any(a for a, _ in answers)
        await pc.close()

    asyncio.run(scenario())


def test_peer_connections_share_one_certificate_and_ssl_context() -> None:
    async def scenario() -> None:
        a, b = glue.new_peer_connection([]), glue.new_peer_connection([])
        for pc in (a, b):
            pc.addTransceiver("video")
        dtls_a = a.getTransceivers()[0].receiver.transport
        dtls_b = b.getTransceivers()[0].receiver.transport
        assert dtls_a.getLocalParameters().fingerprints == dtls_b.getLocalParameters().fingerprints
        cert = glue.shared_certificate()
        profiles = dtls_a._srtp_profiles
        assert cert._create_ssl_context(profiles) is cert._create_ssl_context(profiles)
        assert cert.expires > datetime.datetime.now(datetime.UTC)
        for pc in (a, b):
            await pc.close()

    asyncio.run(scenario())


async def test_rid_extensions_negotiated_only_on_simulcast_m_lines() -> None:
    client = RTCPeerConnection()
    client.addTransceiver("video", direction="sendonly")
    await client.setLocalDescription(await client.createOffer())
    offer = client.localDescription.sdp.replace(
        "a=mid:0\r\n",
        "a=mid:0\r\na=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n",
    )
    await client.close()
    answers = []
    for simulcast in ({0}, set()):
        pc = glue.new_peer_connection([])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        assert glue.negotiate_rid_extensions(pc, simulcast) == simulcast
        await pc.setLocalDescription(await pc.createAnswer())
        answers.append(pc.localDescription.sdp)
        await pc.close()
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in answers[0]
    assert "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id" in answers[0]
    assert "rtp-stream-id" not in answers[1]  # no simulcast: the answer aiortc writes
