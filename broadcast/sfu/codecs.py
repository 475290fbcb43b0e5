"""Which of a viewer's negotiated codecs can carry the publisher's RTP unchanged."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from broadcast.protocol.offer import h264_profile

__all__ = ["CodecSpec", "payload_type_map"]

# Which H.264 profiles a decoder of the key profile also decodes (ITU-T H.264 Annex A).
# Plain Baseline is taken as Constrained Baseline: the encoders that send it (x264,
# FFmpeg, OpenH264) use neither FMO nor ASO, and browsers decode it so.
_BASELINE = ("constrained-baseline", "baseline")
_H264_DECODES: dict[str, tuple[str, ...]] = {
    "constrained-baseline": _BASELINE,
    "baseline": _BASELINE,
    "main": (*_BASELINE, "main"),
    "constrained-high": (*_BASELINE, "main", "constrained-high"),
    "high": (*_BASELINE, "main", "constrained-high", "high"),
}


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A negotiated codec, reduced to what decides bitstream compatibility."""

    payload_type: int
    mime: str  # lower case, e.g. "video/h264"
    clock_rate: int
    channels: int | None = None
    parameters: Mapping[str, object] | None = None

    @property
    def name(self) -> str:
        return self.mime.split("/", 1)[1]

    @property
    def is_rtx(self) -> bool:
        return self.mime.endswith("/rtx")

    @property
    def apt(self) -> int | None:
        value = (self.parameters or {}).get("apt")
        return int(str(value)) if value is not None else None

    def _h264_key(self) -> tuple[str, str]:
        params = {k: str(v) for k, v in (self.parameters or {}).items() if v is not None}
        try:
            profile = h264_profile(params)
        except ValueError:
            profile = "unknown"
        # RFC 6184 §8.1: packetization-mode defaults to 0 when absent.
        return profile, params.get("packetization-mode", "0")

    def carries(self, other: CodecSpec, *, exact: bool = True) -> bool:
        """True if RTP of `other` can be sent with this codec's payload type as is.

        With `exact=False` an H.264 decoder of a wider profile takes a narrower one.
        """
        if self.mime != other.mime or self.clock_rate != other.clock_rate:
            return False
        if self.mime == "video/h264":
            mine, theirs = self._h264_key(), other._h264_key()
            if mine[1] != theirs[1]:
                return False
            return mine[0] == theirs[0] or (
                not exact and theirs[0] in _H264_DECODES.get(mine[0], ())
            )
        return True


def payload_type_map(
    publisher: Iterable[CodecSpec], viewer: Iterable[CodecSpec]
) -> dict[int, tuple[int, int | None]]:
    """Publisher payload type -> (viewer payload type, viewer RTX payload type or None).

    A publisher codec the viewer did not negotiate is absent: its packets are not sent.
    """
    viewer_list = list(viewer)
    rtx_for = {c.apt: c.payload_type for c in viewer_list if c.is_rtx and c.apt is not None}
    media = [c for c in viewer_list if not c.is_rtx]
    mapping: dict[int, tuple[int, int | None]] = {}
    for codec in publisher:
        if codec.is_rtx:
            continue
        match = next((c for c in media if c.carries(codec)), None) or next(
            (c for c in media if c.carries(codec, exact=False)), None
        )
        if match is not None:
            mapping[codec.payload_type] = (match.payload_type, rtx_for.get(match.payload_type))
    return mapping
