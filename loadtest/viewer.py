"""WHEP viewers for the load test, and the worker process that runs a share of them.

A counting viewer never decodes: the `track` event replaces its receiver's
`_handle_rtp_packet` (on the instance) with a counter of packets, payload bytes, loss,
jitter, first RTP and first keyframe. A decoding viewer counts the same way, then hands the
packet on to aiortc and consumes its tracks, recording decoded frames (and, for the
synthetic publisher, frame-counter skips).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import time
import traceback
from typing import Any
from urllib.parse import urljoin

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc import RTCSessionDescription as SDP
from aiortc.mediastreams import MediaStreamError

from broadcast.protocol.keyframes import is_keyframe_start
from loadtest.stats import SeqTracker

__all__ = ["Viewer", "explain", "setup_process", "worker_main"]

NO_MEDIA_S = 10.0  # a viewer without RTP this long after its POST is a failure
# SRTP authentication tag per DTLS-SRTP profile (RFC 5764 §4.1.2, RFC 7714 §14.2)
SRTP_TAG_BYTES = {
    b"SRTP_AES128_CM_SHA1_80": 10,
    b"SRTP_AEAD_AES_128_GCM": 16,
    b"SRTP_AEAD_AES_256_GCM": 16,
}
_RTP_HEADER = struct.Struct("!HII")  # sequence number, timestamp, SSRC (RFC 3550 §5.1)


def setup_process(loopback: bool) -> None:
    """uvloop when importable; ICE host candidates on 127.0.0.1 only for a loopback target;
    Ctrl-C is for the main process, which then stops this one in order (reports included)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ImportError):
        __import__("uvloop").install()
    if loopback:
        import aioice.ice

        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []


def grow_buffers(pc: RTCPeerConnection, size: int) -> int:
    """SO_RCVBUF of the peer's gathered UDP sockets (capped by net.core.rmem_max): a busy
    worker loop must not drop at its own socket what the server sent. The socket count."""
    done = 0
    for tr in pc.getTransceivers():
        with contextlib.suppress(AttributeError):
            gatherer = tr.receiver.transport.transport.iceGatherer
            for protocol in gatherer._connection._protocols:
                sock = protocol.transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                    done += 1
    return done


class TrackCounter:
    """Everything counted on one received track (all SSRCs of its kind)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.codecs: dict[int, tuple[str, int, bool]] = {}  # pt -> (name, clock rate, rtx)
        self.receiver: Any = None  # its codecs are known once it starts receiving
        self.sources: dict[int, SeqTracker] = {}
        self.current: SeqTracker | None = None
        self.packets = self.bytes = self.rtx = self.unknown_pt = 0
        self.codec = ""
        self.first_rtp: float | None = None
        self.first_key: float | None = None
        self.last_rtp: float | None = None

    def add(self, pt: int, ssrc: int, seq: int, ts: int, payload: bytes, now: float) -> None:
        codec = self.codecs.get(pt)
        if codec is None:
            self.learn_codecs()
            codec = self.codecs.get(pt)
            if codec is None:
                self.unknown_pt += 1
                return
        name, clock, rtx = codec
        if rtx:  # RFC 4588: the original sequence number leads the payload
            self.rtx += 1
            if self.current is not None and len(payload) >= 2:
                if self.current.recover(payload[0] << 8 | payload[1]):
                    self.bytes += len(payload) - 2
            return
        if not self.count(ssrc, seq, ts, len(payload), now, clock, name):
            return
        if self.first_key is None and self.kind == "video" and is_keyframe_start(name, payload):
            self.first_key = now

    def count(
        self, ssrc: int, seq: int, ts: int, size: int, now: float, clock: int, name: str
    ) -> bool:
        """Count one media packet by its header; False for a duplicate."""
        tracker = self.sources.get(ssrc)
        if tracker is None:
            tracker = self.sources[ssrc] = SeqTracker(clock)
            self.codec = name
        self.current = tracker
        if not tracker.add(seq, ts, now):
            return False
        self.packets += 1
        self.bytes += size
        self.last_rtp = now
        if self.first_rtp is None:
            self.first_rtp = now
        return True

    def media_routes(self) -> dict[int, tuple[TrackCounter, int, str]]:
        """Payload type -> (this counter, clock rate, codec) for its media (not RTX) types."""
        return {pt: (self, c[1], c[0]) for pt, c in self.codecs.items() if not c[2]}

    def learn_codecs(self) -> None:
        """The payload types the receiver negotiated (aiortc sets them when it starts)."""
        codecs = getattr(self.receiver, "_RTCRtpReceiver__codecs", None) or {}
        for pt, c in codecs.items():
            name = c.mimeType.split("/")[-1].lower()
            self.codecs[pt] = (name, c.clockRate, name == "rtx")

    @property
    def expected(self) -> int:
        return sum(s.expected for s in self.sources.values())

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.sources.values())

    def report(self, stop: float) -> dict[str, Any]:
        jitter = max((s.jitter_ms for s in self.sources.values()), default=None)
        span = stop - self.first_rtp if self.first_rtp is not None else 0.0
        return {
            "codec": self.codec,
            "ssrcs": len(self.sources),
            "packets_received": self.packets,
            "packets_lost": self.lost,
            "packets_expected": self.expected,
            "loss_pct": 100 * self.lost / self.expected if self.expected else None,
            "bytes_received": self.bytes,
            "bitrate_bps": self.bytes * 8 / span if span > 0 else 0.0,
            "jitter_ms": jitter,
            "duplicates": sum(s.duplicates for s in self.sources.values()),
            "reordered": sum(s.reordered for s in self.sources.values()),
            "rtx_packets": self.rtx,
            "unknown_pt_packets": self.unknown_pt,
        }


class Viewer:
    def __init__(self, vid: int, decode: bool, cfg: dict[str, Any]) -> None:
        self.vid, self.decode, self.cfg = vid, decode, cfg
        self.tracks = {k: TrackCounter(k) for k in ("video", "audio")}
        self.pc: RTCPeerConnection | None = None
        self.location: str | None = None
        self.error: str | None = None
        self.state = "waiting"
        self.frozen = self.diverted = self.header_counting = False
        self.posted: float | None = None
        self.joined: float | None = None
        self.stopped: float | None = None
        self.frames = self.audio_frames = self.counter_skips = 0  # decoding viewers only
        self.sizes: set[str] = set()
        self.first_decoded: float | None = None
        self._counter: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- receiving --------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.pc is not None
        for tr in self.pc.getTransceivers():
            if tr.receiver.track is track:
                self._tap(tr.receiver, self.tracks[track.kind])
        if self.decode:
            self._tasks.append(asyncio.ensure_future(self._drain(track)))

    def _tap(self, receiver: Any, counter: TrackCounter) -> None:
        counter.receiver = receiver
        counter.learn_codecs()
        original, decode, clock = receiver._handle_rtp_packet, self.decode, time.monotonic

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            if self.frozen:
                return
            counter.add(
                packet.payload_type,
                packet.ssrc,
                packet.sequence_number,
                packet.timestamp,
                packet.payload,
                clock(),
            )
            if decode:
                await original(packet, arrival_time_ms=arrival_time_ms)
            elif not self.diverted and all(c.first_rtp for c in self.tracks.values()):
                if self.tracks["video"].first_key is not None:
                    self._count_srtp_headers(receiver.transport)

        receiver._handle_rtp_packet = handle

    def _count_srtp_headers(self, dtls: Any) -> None:
        """From now on count media packets from each datagram's header, which SRTP leaves in
        the clear (RFC 3711 §3.1), skipping aiortc's queue, SRTP unprotect and RTP parsing:
        a counting viewer costs a fraction of the CPU, so one core drives more of them.
        RTX, RTCP, DTLS and STUN still take aiortc's path. Bytes are payload plus padding.
        """
        self.diverted = True  # tried once
        tag = SRTP_TAG_BYTES.get(dtls._ssl.get_selected_srtp_profile())
        ice = dtls.transport._connection
        if tag is None:
            return  # an unknown profile: keep aiortc's path
        routes = self.tracks["video"].media_routes() | self.tracks["audio"].media_routes()
        passthrough, clock = ice.data_received, time.monotonic

        def data_received(data: bytes, component: int) -> None:
            b0, size = data[0], len(data)
            # RTP, not RTCP (RFC 5761 §4: RTCP packet types 192-223 sit where M+PT would)
            if 127 < b0 < 192 and size > 12 and not 191 < data[1] < 224:
                route = routes.get(data[1] & 0x7F)
                if route is not None:
                    if self.frozen:
                        return
                    h = 12 + 4 * (b0 & 0x0F)  # CSRCs, then RFC 8285 extensions
                    if b0 & 0x10 and size >= h + 4:
                        h += 4 + 4 * (data[h + 2] << 8 | data[h + 3])
                    seq, ts, ssrc = _RTP_HEADER.unpack_from(data, 2)
                    counter, rate, name = route
                    counter.count(ssrc, seq, ts, size - h - tag, clock(), rate, name)
                    return
            passthrough(data, component)

        ice.data_received = data_received
        self.header_counting = True

    async def _drain(self, track: MediaStreamTrack) -> None:
        clip = self.cfg.get("clip") if self.cfg["publish"] == "synthetic" else None
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame: Any = await track.recv()
                if self.frozen:
                    continue
                if track.kind == "audio":
                    self.audio_frames += 1
                    continue
                if self.first_decoded is None:
                    self.first_decoded = time.monotonic()
                self.frames += 1
                self.sizes.add(f"{frame.width}x{frame.height}")
                if clip and (frame.width, frame.height) == (clip["width"], clip["height"]):
                    self._check_counter(frame, clip["frames"])

    def _check_counter(self, frame: Any, period: int) -> None:
        from loadtest.publisher import read_counter

        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
        number = read_counter(luma)
        if self._counter is not None:
            self.counter_skips += (number - self._counter - 1) % period
        self._counter = number

    # -- signalling -------------------------------------------------------------------
    async def run(self, client: httpx.AsyncClient, join_at: float, stop_at: float) -> None:
        try:
            await asyncio.sleep(max(0.0, join_at - time.monotonic()))
            if time.monotonic() < stop_at:
                await asyncio.wait_for(self._join(client), max(0.1, stop_at - time.monotonic()))
                await self._watch(stop_at)
        except Exception as exc:
            self.fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        finally:
            await self.stop(client)

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error, self.state = reason, "failed"

    async def _join(self, client: httpx.AsyncClient) -> None:
        self.state = "joining"
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        pc.on("track", self._on_track)
        await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 10)
        if self.cfg.get("rcvbuf"):
            grow_buffers(pc, self.cfg["rcvbuf"])
        headers = {"Content-Type": "application/sdp"} | self.cfg["auth"]
        self.posted = time.monotonic()
        r = await client.post(self.cfg["url"], content=pc.localDescription.sdp, headers=headers)
        if r.status_code != 201:
            raise RuntimeError(f"POST {r.status_code} {r.text.strip()[:200]}")
        self.joined = time.monotonic()
        if "location" in r.headers:
            self.location = urljoin(str(r.url), r.headers["location"])
        await asyncio.wait_for(pc.setRemoteDescription(SDP(sdp=r.text, type="answer")), 10)
        self.state = "connecting"

    async def _watch(self, stop_at: float) -> None:
        assert self.pc is not None and self.posted is not None
        while (now := time.monotonic()) < stop_at:
            state = self.pc.connectionState
            if state == "connected" and self.state == "connecting":
                self.state = "connected"
            elif state in ("failed", "closed"):
                raise RuntimeError(f"connection {state}")
            if now - self.posted > NO_MEDIA_S and not self.first_rtp:
                raise RuntimeError(f"no RTP within {NO_MEDIA_S:.0f} s ({state})")
            await asyncio.sleep(min(0.25, stop_at - now))

    @property
    def first_rtp(self) -> float | None:
        times = [t.first_rtp for t in self.tracks.values() if t.first_rtp is not None]
        return min(times, default=None)

    async def stop(self, client: httpx.AsyncClient) -> None:
        if self.stopped is None:
            self.stopped = time.monotonic()
        self.frozen = True
        if self.posted is None:
            self.fail("not joined before the stop")
        elif self.first_rtp is None:
            self.fail("no RTP before the stop")
        if self.state != "failed":
            self.state = "done"
        if self.location:
            with contextlib.suppress(httpx.HTTPError):
                await client.delete(self.location, headers=self.cfg["auth"], timeout=3)
            self.location = None
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), 5)

    # -- reporting --------------------------------------------------------------------
    def totals(self) -> tuple[int, int, int, int]:
        """(packets received, expected, lost, bytes) over both tracks, right now."""
        t = self.tracks.values()
        return (
            sum(c.packets for c in t),
            sum(c.expected for c in t),
            sum(c.lost for c in t),
            sum(c.bytes for c in t),
        )

    def report(self) -> dict[str, Any]:
        def ms(t: float | None) -> float | None:
            return None if t is None or self.posted is None else (t - self.posted) * 1000

        stop = self.stopped or time.monotonic()
        tracks = {k: c.report(stop) for k, c in self.tracks.items()}
        received, expected, lost, octets = self.totals()
        video = self.tracks["video"]
        first_frame = self.first_decoded if self.decode else video.first_key
        jitters = [t["jitter_ms"] for t in tracks.values() if t["jitter_ms"] is not None]
        r: dict[str, Any] = {"id": self.vid, "worker": os.getpid(), "decode": self.decode}
        r |= {"state": self.state, "error": self.error}
        r |= {"join_ms": ms(self.joined), "first_rtp_ms": ms(self.first_rtp)}
        r |= {"first_keyframe_ms": ms(video.first_key), "first_frame_ms": ms(first_frame)}
        r |= {"packets_received": received, "packets_lost": lost, "packets_expected": expected}
        r["loss_pct"] = 100 * lost / expected if expected else None
        r["bytes_received"] = octets
        r["bitrate_bps"] = sum(t["bitrate_bps"] for t in tracks.values())
        r["jitter_ms"] = max(jitters, default=None)
        r["rtx_packets"] = sum(t["rtx_packets"] for t in tracks.values())
        r["tracks"] = tracks
        r["counted_from_srtp_headers"] = self.header_counting
        if self.decode:
            r["decoded"] = {"frames": self.frames, "audio_frames": self.audio_frames}
            skips = self.counter_skips if self.cfg["publish"] == "synthetic" else None
            r["decoded"] |= {"sizes": sorted(self.sizes), "counter_skips": skips}
        return r


async def _worker(
    wid: int,
    cfg: dict[str, Any],
    specs: list[tuple[int, bool, float]],
    q: Any,
    go: Any,
    start_value: Any,
    abort: Any,
) -> None:
    viewers = [Viewer(vid, decode, cfg) for vid, decode, _ in specs]
    q.put(("ready", wid))
    parent = os.getppid()
    if not await asyncio.to_thread(go.wait, 60):
        raise RuntimeError("no start signal within 60 s")
    start = start_value.value
    stop_at = start + cfg["ramp"] + cfg["duration"]
    limits = httpx.Limits(max_connections=min(100, len(specs) + 1))
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        tasks = [
            asyncio.ensure_future(v.run(client, start + offset, stop_at))
            for v, (_, _, offset) in zip(viewers, specs, strict=True)
        ]
        next_tick = start + 1
        while not all(t.done() for t in tasks):
            if abort.is_set() or os.getppid() != parent:
                for v in viewers:
                    v.fail("aborted")
                break
            now = time.monotonic()
            if now >= next_tick:
                q.put(("tick", wid, now, _snapshot(viewers)))
                next_tick += 1
            await asyncio.wait(tasks, timeout=max(0.05, min(0.2, next_tick - now)))
        q.put(("tick", wid, min(time.monotonic(), stop_at), _snapshot(viewers)))
        for v in viewers:  # a no-op for finished viewers; bounded for the others
            with contextlib.suppress(Exception):
                await asyncio.wait_for(v.stop(client), 10)
        for t in tasks:
            t.cancel()
    q.put(("final", wid, [v.report() for v in viewers]))


def _snapshot(viewers: list[Viewer]) -> dict[str, int]:
    s = {"connected": 0, "failed": 0, "received": 0, "expected": 0, "lost": 0, "bytes": 0}
    for v in viewers:
        s["connected"] += v.state == "connected" or (
            v.state == "done" and v.error is None and v.first_rtp is not None
        )
        s["failed"] += v.state == "failed"
        received, expected, lost, octets = v.totals()
        s["received"] += received
        s["expected"] += expected
        s["lost"] += lost
        s["bytes"] += octets
    return s


def worker_main(
    wid: int,
    cfg: dict[str, Any],
    specs: list[tuple[int, bool, float]],
    q: Any,
    go: Any,
    start_value: Any,
    abort: Any,
) -> None:
    """Process entry point: run these viewers (id, decode, join offset) and report."""
    setup_process(cfg["loopback"])
    try:
        asyncio.run(_worker(wid, cfg, specs, q, go, start_value, abort))
    except BaseException as exc:
        q.put(("worker-error", wid, f"{exc!r}", explain(exc)))


def explain(exc: BaseException) -> str:
    """A traceback for the unexpected, nothing for the errors that speak for themselves."""
    expected = (RuntimeError, TimeoutError, httpx.HTTPError, KeyboardInterrupt, SystemExit)
    return "" if isinstance(exc, expected) else traceback.format_exc(limit=8)
