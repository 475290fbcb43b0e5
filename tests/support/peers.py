"""Real aiortc peers for integration tests: a WHIP publisher and WHEP viewers."""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import httpx
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

VIDEO_CLOCK = 90000


class PatternVideo(VideoStreamTrack):
    """Frames that differ from each other (a moving luma ramp), at 30 fps."""

    def __init__(self, width: int = 640, height: int = 360) -> None:
        super().__init__()
        self.width = width
        self.height = height
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        shade = (self.count * 7) % 200 + 20
        for i, plane in enumerate(frame.planes):
            plane.update(bytes([shade if i == 0 else 128]) * plane.buffer_size)
        self.count += 1
        frame.pts = pts
        frame.time_base = time_base
        return frame


class ToneAudio(AudioStreamTrack):
    """A 440 Hz tone, 20 ms frames of 48 kHz mono s16."""

    def __init__(self) -> None:
        super().__init__()
        self.sample = 0

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        samples = frame.samples
        data = bytearray()
        for i in range(samples):
            value = int(8000 * math.sin(2 * math.pi * 440 * (self.sample + i) / 48000))
            data += value.to_bytes(2, "little", signed=True)
        self.sample += samples
        frame.planes[0].update(bytes(data))
        return frame


@dataclass
class WhipResult:
    status: int
    location: str | None
    etag: str | None
    headers: httpx.Headers
    answer: str


async def exchange(
    client: httpx.AsyncClient,
    url: str,
    pc: RTCPeerConnection,
    token: str | None = None,
    munge: Callable[[str], str] | None = None,
) -> WhipResult:
    """POST our offer (candidates included) and apply the answer."""
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    offer = pc.localDescription.sdp
    if munge is not None:
        offer = munge(offer)
    response = await client.post(url, content=offer, headers=headers)
    result = WhipResult(
        status=response.status_code,
        location=response.headers.get("location"),
        etag=response.headers.get("etag"),
        headers=response.headers,
        answer=response.text,
    )
    if response.status_code == 201:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
    return result


def prefer(pc: RTCPeerConnection, kind: str, mime: str) -> None:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == kind:
            caps = RTCRtpSender.getCapabilities(kind).codecs
            chosen = [c for c in caps if c.mimeType.lower() == mime.lower()]
            rtx = [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]
            transceiver.setCodecPreferences(chosen[:1] + rtx)


class Publisher:
    def __init__(
        self,
        base_url: str,
        stream: str,
        *,
        video_codec: str | None = "video/VP8",
        size: tuple[int, int] = (640, 360),
        obs_like_gop: float | None = None,
    ) -> None:
        """`obs_like_gop`: ignore PLI and send a keyframe every that many seconds, as OBS."""
        self.url = f"{base_url}/whip/{stream}"
        self.base_url = base_url
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = PatternVideo(*size)
        self.audio = ToneAudio()
        video_sender = self.pc.addTransceiver(self.video, direction="sendonly").sender
        self.pc.addTransceiver(self.audio, direction="sendonly")
        self.keyframe_task: asyncio.Task[None] | None = None
        if obs_like_gop is not None:
            video_sender._send_keyframe = lambda: None  # PLI/FIR no longer reach the encoder
            self.keyframe_task = asyncio.ensure_future(self._keyframes(video_sender, obs_like_gop))
        if video_codec is not None:
            prefer(self.pc, "video", video_codec)
        self.result: WhipResult | None = None
        self.connected = asyncio.Event()

        @self.pc.on("connectionstatechange")
        def _() -> None:
            if self.pc.connectionState == "connected":
                self.connected.set()

    async def start(
        self,
        client: httpx.AsyncClient,
        token: str | None = None,
        munge: Callable[[str], str] | None = None,
    ) -> WhipResult:
        self.result = await exchange(client, self.url, self.pc, token, munge)
        return self.result

    @staticmethod
    async def _keyframes(sender: RTCRtpSender, interval: float) -> None:
        while True:  # ends when stop() cancels it
            sender._RTCRtpSender__force_keyframe = True  # aiortc's own keyframe flag
            await asyncio.sleep(interval)

    async def stop(self, client: httpx.AsyncClient | None = None) -> None:
        if self.keyframe_task is not None:
            self.keyframe_task.cancel()
        if client is not None and self.result and self.result.location:
            await client.delete(self.base_url + self.result.location)
        await self.pc.close()


@dataclass
class TrackStats:
    frames: int = 0
    first_frame_at: float | None = None
    first_frame_wall: float | None = None
    sizes: set[tuple[int, int]] = field(default_factory=set)
    frame_event: asyncio.Event = field(default_factory=asyncio.Event)
    target: int = 0


class Viewer:
    def __init__(self, base_url: str, stream: str, *, layer: str | None = None) -> None:
        """`layer`: the simulcast rid to receive (WHEP POST `?layer=<rid>`)."""
        query = "" if layer is None else f"?layer={layer}"
        self.url = f"{base_url}/whep/{stream}{query}"
        self.base_url = base_url
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.video = TrackStats()
        self.audio = TrackStats()
        self.tasks: list[asyncio.Task[None]] = []
        self.result: WhipResult | None = None
        self.posted_at: float | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            stats = self.video if track.kind == "video" else self.audio
            self.tasks.append(asyncio.ensure_future(self._consume(track, stats)))

    async def _consume(self, track: MediaStreamTrack, stats: TrackStats) -> None:
        try:
            while True:
                frame = await track.recv()
                stats.frames += 1
                if stats.first_frame_at is None:
                    stats.first_frame_at = time.monotonic()
                    stats.first_frame_wall = time.time()
                if isinstance(frame, av.VideoFrame):
                    stats.sizes.add((frame.width, frame.height))
                if stats.frames >= stats.target:
                    stats.frame_event.set()
        except MediaStreamError:
            return

    async def start(self, client: httpx.AsyncClient, token: str | None = None) -> WhipResult:
        self.posted_at = time.monotonic()
        self.result = await exchange(client, self.url, self.pc, token)
        return self.result

    async def wait_frames(self, video: int, audio: int = 0, timeout: float = 20.0) -> None:
        """Wait until this many frames were decoded (bounded by `timeout`)."""
        self.video.target = video
        self.audio.target = audio
        self.video.frame_event.clear()
        self.audio.frame_event.clear()
        if self.video.frames >= video:
            self.video.frame_event.set()
        if self.audio.frames >= audio:
            self.audio.frame_event.set()
        await asyncio.wait_for(
            asyncio.gather(self.video.frame_event.wait(), self.audio.frame_event.wait()), timeout
        )

    def first_frame_delay(self) -> float | None:
        if self.video.first_frame_at is None or self.posted_at is None:
            return None
        return self.video.first_frame_at - self.posted_at

    async def stop(self, client: httpx.AsyncClient | None = None) -> None:
        if client is not None and self.result and self.result.location:
            await client.delete(self.base_url + self.result.location)
        await self.pc.close()
        for task in self.tasks:
            task.cancel()


__all__ = ["Publisher", "Viewer", "exchange", "fractions"]


async def wait_state(pc: RTCPeerConnection, states: set[str], timeout: float = 10.0) -> str:
    """Await the peer connection reaching one of `states` (bounded by `timeout`)."""
    reached: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def check() -> None:
        if pc.connectionState in states and not reached.done():
            reached.set_result(pc.connectionState)

    pc.on("connectionstatechange", check)
    check()
    try:
        return await asyncio.wait_for(reached, timeout)
    finally:
        pc.remove_listener("connectionstatechange", check)


class DataViewer:
    """A WHEP viewer that offers data channels and collects what arrives on each."""

    def __init__(self, base_url: str, stream: str) -> None:
        self.url = f"{base_url}/whep/{stream}"
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.createDataChannel("whep")  # any channel: the offer gets m=application
        self.channels: dict[str, RTCDataChannel] = {}
        self.messages: dict[str, list[str | bytes]] = {}
        self.changed = asyncio.Event()  # set at each channel or message that arrives

        @self.pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            self.channels[channel.label] = channel
            received = self.messages.setdefault(channel.label, [])

            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                received.append(message)
                self.changed.set()

            self.changed.set()

    async def start(self, client: httpx.AsyncClient) -> None:
        assert (await exchange(client, self.url, self.pc)).status == 201

    async def wait(self, check: Callable[[], bool], timeout: float = 30.0) -> None:
        async def until() -> None:
            while not check():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), timeout)
