"""What an aiortc viewer's VP8 decoder is given, checked frame by frame.

Each frame handed to the decoder must be a keyframe or carry the PictureID right after the
previous frame's (RFC 7741 §4.2); otherwise a frame it may reference never arrived and the
picture it decodes to is corrupt. Layer switches must keep PictureIDs running on too.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCPeerConnection

from broadcast.protocol.vp8 import read_fields

__all__ = ["Vp8FrameCheck"]


class Vp8FrameCheck:
    def __init__(self, pc: RTCPeerConnection) -> None:
        (receiver,) = [t.receiver for t in pc.getTransceivers() if t.kind == "video"]
        buffer = receiver._RTCRtpReceiver__jitter_buffer
        self.frames = 0
        self.keyframes = 0
        self.gaps = 0  # delta frames after a missing frame: corrupt pictures
        self.keyframe_jumps = 0  # keyframes whose PictureID does not follow the last one
        self.last_id: int | None = None
        self._ids: dict[int, int] = {}  # RTP timestamp -> PictureID, until the frame is out
        add = buffer.add

        def checked_add(packet: Any) -> Any:
            fields = read_fields(packet.payload)
            if fields.picture_id is not None:
                self._ids[packet.timestamp] = fields.picture_id
            pli, frame = add(packet)
            if frame is not None:
                self._frame(frame.timestamp, frame.data)
            return pli, frame

        buffer.add = checked_add

    def _frame(self, timestamp: int, data: bytes) -> None:
        picture_id = self._ids.pop(timestamp, None)
        if len(self._ids) > 1000:  # frames the buffer dropped: forget the oldest
            for key in list(self._ids)[:500]:
                del self._ids[key]
        follows = (
            self.last_id is not None
            and picture_id is not None
            and picture_id == (self.last_id + 1) & 0x7FFF
        )
        keyframe = bool(data) and not data[0] & 0x01  # RFC 6386 §9.1 frame tag, P=0
        self.frames += 1
        if keyframe:
            self.keyframes += 1
            if self.last_id is not None and not follows:
                self.keyframe_jumps += 1
        elif not follows:
            self.gaps += 1
        self.last_id = picture_id
