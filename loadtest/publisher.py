"""The synthetic WHIP publisher: a pre-encoded VP8 clip with a frame counter, plus Opus.

The clip is encoded once per (size, fps, bitrate, GOP, length) and cached under /tmp, so the
load test's CPU goes to packetizing only, never to live encoding that would compete with the
server. Every frame carries its number within the clip as a row of 16 black/white squares
at the top left (most significant bit first); decoding viewers read it back (`read_counter`).
It runs in its own process (`publisher_main`), paced in real time and looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import marshal
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc import RTCSessionDescription as SDP
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

from loadtest.quick_cpu import VP8, PacketTrack

__all__ = ["ClipSpec", "encode_clip", "publisher_main", "read_counter", "stamp_counter"]

CACHE = Path(os.environ.get("LOADTEST_CACHE", "/tmp/broadcast-loadtest"))
COUNTER_BITS = 16
_CACHE_VERSION = 1


@dataclass(frozen=True)
class ClipSpec:
    width: int = 1280
    height: int = 720
    fps: int = 30
    kbps: int = 2500
    gop: int = 60
    seconds: float = 10.0

    @property
    def frames(self) -> int:
        """A whole number of GOPs, at least one: the loop point is a keyframe anyway."""
        gops = max(1, round(self.seconds * self.fps / self.gop))
        return min(gops * self.gop, (1 << COUNTER_BITS) - 1)

    @property
    def cache_path(self) -> Path:
        name = f"lt{_CACHE_VERSION}-vp8-{self.width}x{self.height}-{self.fps}fps-{self.kbps}k"
        return CACHE / f"{name}-g{self.gop}-{self.frames}f.marshal"


def _square(width: int) -> int:
    return max(4, width // 24)


def stamp_counter(luma: np.ndarray[Any, Any], number: int) -> None:
    """Draw `number` as COUNTER_BITS squares (white = 1) into a luma plane, in place."""
    s = _square(luma.shape[1])
    for k in range(COUNTER_BITS):
        bit = (number >> (COUNTER_BITS - 1 - k)) & 1
        x = s // 2 + k * s
        luma[s // 2 : s // 2 + s, x : x + s] = 235 if bit else 16


def read_counter(luma: np.ndarray[Any, Any]) -> int:
    """The number drawn by `stamp_counter`, from the centres of its squares."""
    s = _square(luma.shape[1])
    y0, value = s // 2 + s // 2 - 1, 0
    for k in range(COUNTER_BITS):
        x0 = s // 2 + k * s + s // 2 - 1
        value = value << 1 | int(luma[y0 : y0 + 2, x0 : x0 + 2].mean() > 128)
    return value


def _encode_video(spec: ClipSpec) -> list[bytes]:
    """VP8 CBR at a fixed GOP without alt-ref (quick_cpu's settings): testsrc2 + noise, so
    the encoder really spends the bitrate, with the counter drawn on every frame."""
    ctx: Any = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.gop_size = spec.width, spec.height, "yuv420p", spec.gop
    ctx.time_base, ctx.framerate = fractions.Fraction(1, spec.fps), spec.fps
    ctx.bit_rate = spec.kbps * 1000
    ctx.options = dict(o.split("=") for o in VP8.split()) | {"keyint_min": str(spec.gop)}
    k = f"{spec.kbps}k"
    ctx.options |= {"minrate": k, "maxrate": k, "bufsize": k}
    size, rate = f"{spec.width}x{spec.height}", spec.fps
    lavfi = f"testsrc2=size={size}:rate={rate},noise=alls=12:allf=t"
    packets: list[bytes] = []
    with av.open(lavfi, format="lavfi") as source:
        for i, frame in enumerate(source.decode(video=0)):
            if i >= spec.frames:
                break
            planes = frame.to_ndarray(format="yuv420p")
            stamp_counter(planes[: spec.height], i)
            out = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            out.pts, out.time_base = i, ctx.time_base
            out.pict_type = av.video.frame.PictureType.NONE  # lavfi marks every frame I
            packets += [bytes(p) for p in ctx.encode(out)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return packets


def _encode_audio(seconds: float) -> list[bytes]:
    """Opus 48 kHz stereo, 20 ms packets: a 440 Hz tone."""
    opus: Any = av.CodecContext.create("libopus", "w")
    opus.sample_rate, opus.layout, opus.format, opus.bit_rate = 48000, "stereo", "s16", 64000
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000, frame_size=960)
    lavfi = f"sine=frequency=440:sample_rate=48000:duration={seconds}"
    with av.open(lavfi, format="lavfi") as sine:
        frames = [f for frame in sine.decode(audio=0) for f in resampler.resample(frame)]
    return [bytes(p) for f in frames for p in opus.encode(f)]


def encode_clip(spec: ClipSpec) -> tuple[list[bytes], list[bytes]]:
    """(VP8 frames, Opus packets), from the cache when there (written atomically)."""
    path = spec.cache_path
    with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
        video, audio = marshal.loads(path.read_bytes())
        if len(video) == spec.frames and audio:
            return list(video), list(audio)
    video = _encode_video(spec)
    audio = _encode_audio(spec.frames / spec.fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(marshal.dumps((video, audio)))
    tmp.replace(path)
    return video, audio


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _publish(cfg: dict[str, Any], queue: Any, stop: Any) -> None:
    spec = ClipSpec(**cfg["clip"])
    started = time.monotonic()
    video, audio = encode_clip(spec)
    kbps = sum(map(len, video)) * 8 / (spec.frames / spec.fps) / 1000
    info: dict[str, Any] = {"clip": cfg["clip"] | {"frames": spec.frames, "actual_kbps": kbps}}
    info["encode_or_load_s"] = time.monotonic() - started
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = PacketTrack("video", video, 1 / spec.fps, spec.gop)
    sender = pc.addTransceiver(track, direction="sendonly").sender
    if cfg.get("honour_pli"):
        _honour_pli(sender, track)
    pc.addTransceiver(PacketTrack("audio", audio, 0.02), direction="sendonly")
    caps = RTCRtpSender.getCapabilities("video").codecs
    pick = [c for c in caps if c.mimeType.lower() in ("video/vp8", "video/rtx")]
    pc.getTransceivers()[0].setCodecPreferences(pick[:1] + pick[-1:])
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def _() -> None:
        if pc.connectionState == "connected":
            connected.set()

    headers = {"Content-Type": "application/sdp"} | auth_headers(cfg["token"])
    location = None
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            await asyncio.wait_for(pc.setLocalDescription(await pc.createOffer()), 10)
            r = await client.post(cfg["url"], content=pc.localDescription.sdp, headers=headers)
            if r.status_code != 201:
                raise RuntimeError(f"WHIP POST {cfg['url']}: {r.status_code} {r.text[:300]}")
            if "location" in r.headers:
                location = urljoin(str(r.url), r.headers["location"])
            await asyncio.wait_for(pc.setRemoteDescription(SDP(sdp=r.text, type="answer")), 10)
            await asyncio.wait_for(connected.wait(), 15)
            await asyncio.sleep(1.0)  # the first keyframe reaches the server
            info["connect_s"] = time.monotonic() - started
            queue.put(("pub-ready", info))
            parent, deadline = os.getppid(), started + cfg["max_life_s"]
            while not stop.is_set() and os.getppid() == parent and time.monotonic() < deadline:
                if pc.connectionState in ("failed", "closed"):
                    raise RuntimeError(f"publisher connection {pc.connectionState}")
                await asyncio.sleep(0.2)
            final = {"frames_sent": track.count, "keyframes_on_pli": track.keyframes_on_request}
            queue.put(("pub-final", final))
        finally:
            if location:
                with contextlib.suppress(httpx.HTTPError):
                    await client.delete(location, headers=auth_headers(cfg["token"]), timeout=3)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)


def _honour_pli(sender: RTCRtpSender, track: PacketTrack) -> None:
    """Answer PLI/FIR with the clip's next keyframe, as a live encoder would (RFC 4585 §6.3.1).

    aiortc passes pre-encoded packets through untouched, so it cannot force a keyframe itself.
    """
    handle = sender._handle_rtcp_packet

    async def on_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            track.request_keyframe()
        await handle(packet)

    sender._handle_rtcp_packet = on_rtcp  # type: ignore[method-assign]


def publisher_main(cfg: dict[str, Any], queue: Any, stop: Any) -> None:
    """Process entry point: publish until `stop` is set (or the parent dies)."""
    from loadtest.viewer import explain, setup_process

    setup_process(cfg["loopback"])
    try:
        asyncio.run(_publish(cfg, queue, stop))
    except BaseException as exc:  # reported, never raised past the process
        queue.put(("pub-error", f"{exc!r}", explain(exc)))
