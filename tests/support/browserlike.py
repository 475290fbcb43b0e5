"""Make an aiortc viewer's video receiver recover from loss the way a browser's does.

aiortc's receiver is simpler than libwebrtc's in two ways that matter once packets are
really lost (tests/support/shaper.py):

- it asks for a lost packet once, when the gap appears; libwebrtc's NackRequester asks
  again every round trip, up to 10 times;
- its jitter buffer waits for a missing packet until 512 newer ones have arrived (about
  20 s at a small layer's rate), even when a keyframe behind the gap makes it useless;
  libwebrtc decodes from that keyframe and stops asking for the older packets, and asks
  for a keyframe (PLI) once a lost packet is given up on.

Tests that make a viewer lose packets on purpose give it libwebrtc's behaviour, so they
measure the server rather than aiortc's simplifications.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiortc import RTCPeerConnection

from broadcast.protocol.keyframes import is_keyframe_start

__all__ = ["BrowserLikeRecovery"]

INTERVAL = 0.1  # seconds: libwebrtc's round trip before one is measured
MAX_TRIES = 10  # libwebrtc's kMaxNackRetries
PLI_INTERVAL = 1.0  # seconds between keyframe requests


def _older(a: int, b: int) -> bool:
    return a != b and (b - a) & 0xFFFF < 0x8000


class BrowserLikeRecovery:
    def __init__(self, pc: RTCPeerConnection) -> None:
        (self._receiver,) = [t.receiver for t in pc.getTransceivers() if t.kind == "video"]
        self._buffer = self._receiver._RTCRtpReceiver__jitter_buffer
        self._generator = self._receiver._RTCRtpReceiver__nack_generator
        self._tries: dict[int, int] = {}
        self.nacks = 0
        self.plis = 0
        self.skips = 0  # keyframes that let the buffer drop what it waited for
        add = self._buffer.add

        def add_skipping_to_keyframes(packet: Any) -> Any:
            if is_keyframe_start("vp8", packet.payload):
                self._skip_to(packet.sequence_number)
            return add(packet)

        self._buffer.add = add_skipping_to_keyframes
        self._task = asyncio.ensure_future(self._renack())

    def _skip_to(self, seq: int) -> None:
        """A keyframe starts at `seq`: if the buffer still waits for an older packet, give
        up on everything older, and stop asking for it."""
        buffer = self._buffer
        origin = buffer._origin
        if origin is None or not _older(origin, seq):
            return
        waiting = any(
            buffer._packets[(origin + i) % buffer.capacity] is None
            for i in range((seq - origin) & 0xFFFF)
        )
        if not waiting:
            return
        buffer.remove((seq - origin) & 0xFFFF)
        self._generator.missing = {s for s in self._generator.missing if not _older(s, seq)}
        self.skips += 1

    async def _renack(self) -> None:
        receiver = self._receiver
        last_pli = -PLI_INTERVAL
        while True:
            await asyncio.sleep(INTERVAL)
            missing = set(self._generator.missing)
            self._tries = {seq: self._tries.get(seq, 0) for seq in missing}
            due = sorted(seq for seq, tries in self._tries.items() if tries < MAX_TRIES)
            ssrcs = list(receiver._RTCRtpReceiver__remote_streams)
            if not ssrcs:
                continue
            # The video SSRC is the first one the receiver saw (RTX comes later, if at all).
            media = ssrcs[0]
            now = asyncio.get_running_loop().time()
            given_up = len(due) < len(self._tries)
            if given_up and now - last_pli >= PLI_INTERVAL:
                last_pli = now
                await receiver._send_rtcp_pli(media)
                self.plis += 1
            if not due:
                continue
            for seq in due:
                self._tries[seq] += 1
            await receiver._send_rtcp_nack(media, due)
            self.nacks += 1

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
